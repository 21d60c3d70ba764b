package tracing

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// logEvery bounds how often a repeating failure is logged: an unreachable
// collector fails every export (every 5 s by default), and a log line per
// failure would bury everything else.
const logEvery = 30 * time.Second

// rateLog logs the first failure of a run at once, then at most one line per
// logEvery with the count of failures since, then the recovery (if
// recoverMsg is set): the Nomad service client's pattern.
type rateLog struct {
	log        hclog.Logger
	failMsg    string
	recoverMsg string
	every      time.Duration
	now        func() time.Time

	mu         sync.Mutex
	failing    bool
	failures   uint64 // in this run of failures
	suppressed uint64 // since the last line
	last       time.Time
}

func newRateLog(log hclog.Logger, failMsg, recoverMsg string) *rateLog {
	return &rateLog{log: log, failMsg: failMsg, recoverMsg: recoverMsg, every: logEvery, now: time.Now}
}

func (r *rateLog) failure(err error, kv ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures++
	now := r.now()
	if r.failing && now.Sub(r.last) < r.every {
		r.suppressed++
		return
	}
	args := append([]any{"error", err, "failures", r.failures, "not_logged", r.suppressed}, kv...)
	r.log.Warn(r.failMsg, args...)
	r.failing, r.last, r.suppressed = true, now, 0
}

func (r *rateLog) success() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.failing {
		return
	}
	if r.recoverMsg != "" {
		r.log.Info(r.recoverMsg, "failures", r.failures)
	}
	r.failing, r.failures, r.suppressed = false, 0, 0
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
