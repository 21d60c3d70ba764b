package tracing

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/meshlb/meshlb/internal/retry"
)

// logEvery bounds how often a repeating failure is logged: an unreachable
// collector fails every export (every 5 s by default), and a log line per
// failure would bury everything else.
const logEvery = 30 * time.Second

// rateLog logs the first failure of a run at once, then at most one line per
// logEvery with the count of failures not logged since, then the recovery
// (if recoverMsg is set): the Nomad service client's pattern, kept by
// retry.Outage.
type rateLog struct {
	log        hclog.Logger
	failMsg    string
	recoverMsg string
	now        func() time.Time

	mu     sync.Mutex
	outage retry.Outage
}

func newRateLog(log hclog.Logger, failMsg, recoverMsg string) *rateLog {
	return &rateLog{log: log, failMsg: failMsg, recoverMsg: recoverMsg, now: time.Now, outage: retry.Outage{Interval: logEvery}}
}

func (r *rateLog) failure(err error, kv ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	log, skipped := r.outage.Fail(r.now())
	if !log {
		return
	}
	args := append([]any{"error", err, "failures", uint64(r.outage.Failures()), "not_logged", uint64(skipped)}, kv...)
	r.log.Warn(r.failMsg, args...)
}

func (r *rateLog) success() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n, _, ok := r.outage.Recover(r.now()); ok && r.recoverMsg != "" {
		r.log.Info(r.recoverMsg, "failures", uint64(n))
	}
}

// newErrorHandler returns the otel global error handler Setup installs: SDK
// errors (partial exports, dropped attributes, ...) logged, rate limited.
func newErrorHandler(log hclog.Logger) otel.ErrorHandler {
	r := newRateLog(log, "opentelemetry error", "")
	return otel.ErrorHandlerFunc(func(err error) { r.failure(err) })
}

// loggingExporter logs failed exports through a rateLog, and the recovery.
// It reports success to the batch processor, whose only use of the error is
// to hand it to the global error handler: that would log each failure twice
// and could never log the recovery.
type loggingExporter struct {
	sdktrace.SpanExporter
	log *rateLog
}

// ExportSpans implements sdktrace.SpanExporter.
func (e *loggingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if err := e.SpanExporter.ExportSpans(ctx, spans); err != nil {
		e.log.failure(err, "spans", len(spans))
		return nil
	}
	e.log.success()
	return nil
}
