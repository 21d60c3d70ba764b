package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/meshlb/meshlb/lb"
)

// A request is retried on another instance only when that cannot run it
// twice: when it never reached an upstream (a dial error, or no request
// header written), or when it is idempotent (RFC 9110 section 9.2.2) and its
// body can be sent again. A POST or PATCH is never sent twice once a byte of
// it was written.

// isIdempotent reports whether RFC 9110 defines method as idempotent.
func isIdempotent(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPut,
		http.MethodDelete, http.MethodTrace:
		return true
	}
	return false
}

// bodyKind says how the request body can be sent on each attempt.
type bodyKind uint8

const (
	bodyNone     bodyKind = iota // no body
	bodyBuffered                 // held in memory: replayable
	bodyGetBody                  // Request.GetBody makes fresh copies: replayable
	bodyStream                   // read once from the client: not replayable
)

// reqBody is the client's request body as the attempts see it.
type reqBody struct {
	kind   bodyKind
	buf    []byte    // bodyBuffered
	stream io.Reader // bodyStream: the client body, maybe behind a read-ahead
}

// prepareBody decides how the body will be sent. Idempotent requests with a
// body up to MaxReplayBody are read into memory so a retry can replay them;
// every other body streams from the client once.
func (x *exchange) prepareBody() error {
	r := x.r
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		x.body.kind = bodyNone
		return nil
	}
	if r.GetBody != nil {
		x.body.kind = bodyGetBody
		return nil
	}
	limit := x.p.cfg.MaxReplayBody
	if !x.idempotent || limit < 0 || r.ContentLength > limit {
		x.body = reqBody{kind: bodyStream, stream: r.Body}
		return nil
	}
	if r.ContentLength > 0 {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return fmt.Errorf("read request body: %w", err)
		}
		x.body = reqBody{kind: bodyBuffered, buf: buf}
		return nil
	}
	// Unknown length (chunked): read ahead up to the limit.
	buf, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return fmt.Errorf("read request body: %w", err)
	}
	if int64(len(buf)) <= limit {
		x.body = reqBody{kind: bodyBuffered, buf: buf}
		return nil
	}
	x.body = reqBody{kind: bodyStream, stream: io.MultiReader(bytes.NewReader(buf), r.Body)}
	return nil
}

// replayable reports whether the body can be sent again.
func (x *exchange) replayable() bool {
	return x.body.kind != bodyStream
}

// retryable reports whether attempt a, which failed with err, may be tried
// again on another instance.
func (x *exchange) retryable(a *attempt, err error) bool {
	if x.ctx.Err() != nil {
		return false // the client is gone
	}
	if _, ok := errors.AsType[*DialError](err); ok {
		return true
	}
	if x.idempotent && x.replayable() {
		return true
	}
	// Anything else only if not a byte of it reached the upstream.
	return a.ctrace.WroteHeaders != nil && !a.wrote.Load() && !a.stream.read.Load()
}

// attempt is one try of the request on one instance. Its request, URL,
// trace hooks and body wrapper live in one allocation.
type attempt struct {
	x       *exchange
	inst    *lb.Instance
	n       int // 1-based
	start   time.Time
	latency time.Duration // to response headers
	res     *http.Response
	span    trace.Span // client span; nil when tracing is off
	done    bool

	recIdx   int  // index in the exchange's Record.Attempts, when recording
	draining bool // answered 503 draining: the request went on elsewhere
	lost     bool // lost a hedge race

	req      http.Request
	url      url.URL
	ctrace   httptrace.ClientTrace
	wrote    atomic.Bool // request headers written (only traced when it matters)
	buf      bufferedBody
	stream   streamBody
	h1       h1Body // the response body when h1Client carried the attempt
	cancel   context.CancelCauseFunc
	inflight *inflightSet   // while waiting on the response head (hedge.go)
	onLeft   func(*attempt) // the loop exchange's: told when its instance left (loopexchange.go)
}

// newAttempt builds the upstream request for attempt n on inst.
func (x *exchange) newAttempt(inst *lb.Instance, n int) *attempt {
	r := x.r
	var a *attempt
	if n == 1 {
		a = &x.first // the exchange is on the heap anyway: share its allocation
	} else {
		a = new(attempt)
	}
	a.x, a.inst, a.n = x, inst, n
	ctx := x.ctx
	if x.span != nil && x.span.IsRecording() {
		// An unsampled request gets no span per attempt: the instance is
		// handed the server span's (unsampled) context, which is all it
		// needs, and the request pays for no span it would drop.
		ctx = a.startClientSpan(ctx)
	}
	if !x.idempotent || !x.replayable() {
		// Only then does it matter whether the request was written.
		a.ctrace.WroteHeaders = a.markWrote
		ctx = httptrace.WithClientTrace(ctx, &a.ctrace)
	}
	if x.onLoop {
		// The loop exchange ends its attempts itself (loopexchange.go):
		// the request's context, and no context per attempt.
		a.cancel = noCancel
		a.req = *r
	} else {
		// Its own context, so that a hedge that answers first or a pool
		// update can cancel it (hedge.go).
		ctx, a.cancel = context.WithCancelCause(ctx)
		a.req = *r.WithContext(ctx)
	}
	a.url = *r.URL
	a.url.Scheme = upstreamScheme(inst) // "https" for instances tagged TagHTTPS
	a.url.Host = inst.HostPort
	a.url.User = nil
	a.req.URL = &a.url
	a.req.RequestURI = ""
	a.req.Close = false // the client's Connection: close is not the upstream's
	if x.span != nil {
		if n > 1 {
			// An earlier attempt may still hold the header map.
			a.req.Header = r.Header.Clone()
		}
		injectTrace(ctx, a.req.Header)
	}
	switch x.body.kind {
	case bodyNone:
		a.req.Body = nil // nil, not NoBody: the transport may then retry stale connections itself
		a.req.ContentLength = 0
		a.req.GetBody = nil
	case bodyBuffered:
		buf := x.body.buf
		a.buf.Reset(buf)
		a.req.Body = &a.buf
		a.req.ContentLength = int64(len(buf))
		a.req.TransferEncoding = nil
		a.req.GetBody = func() (io.ReadCloser, error) {
			return &bufferedBody{Reader: *bytes.NewReader(buf)}, nil
		}
		if len(buf) == 0 {
			a.req.Body, a.req.GetBody = nil, nil
		}
	case bodyGetBody:
		b, err := r.GetBody()
		if err != nil {
			b = errBody{err}
		}
		a.req.Body = b
	case bodyStream:
		a.stream.r = x.body.stream
		a.req.Body = &a.stream
	}
	a.start = time.Now()
	if x.rec != nil {
		a.recIdx = x.recordAttempt(a)
	}
	return a
}

func (a *attempt) markWrote() { a.wrote.Store(true) }

// noCancel is the cancel of an attempt without a context of its own.
func noCancel(error) {}

// finish reports the attempt's outcome to the balancer and ends its span,
// once.
func (a *attempt) finish(res lb.Result, status int, err error) {
	if a.done {
		return
	}
	a.done = true
	a.cancel(nil)
	if a.x.rec != nil {
		a.recordFinish(status, err)
	}
	a.x.route.balancer.Done(a.inst, res)
	a.stream.Close() // no read after the handler returns
	if a.span != nil {
		a.endClientSpan(status, err)
	}
}

// discard drops a response that will not be forwarded, keeping the
// connection reusable when the body is small.
func (a *attempt) discard() {
	res := a.res
	io.CopyN(io.Discard, res.Body, 4<<10)
	res.Body.Close()
	a.finish(lb.Result{Status: res.StatusCode, Latency: a.latency, RetryAfter: retryAfter(res)}, res.StatusCode, nil)
}

// bufferedBody is a replayable body; Close does nothing.
type bufferedBody struct{ bytes.Reader }

func (*bufferedBody) Close() error { return nil }

// streamBody passes the client's body to one attempt. The transport closes
// request bodies, even on a dial error; that must not close the client's
// body, which a retry may still need, so Close only stops this attempt from
// reading further. read records whether any byte was taken.
type streamBody struct {
	r      io.Reader
	read   atomic.Bool
	closed atomic.Bool
}

func (b *streamBody) Read(p []byte) (int, error) {
	if b.closed.Load() {
		return 0, errors.New("proxy: read on closed request body")
	}
	b.read.Store(true)
	return b.r.Read(p)
}

func (b *streamBody) Close() error {
	b.closed.Store(true)
	return nil
}

// errBody is a body that fails: GetBody could not make a copy.
type errBody struct{ err error }

func (b errBody) Read([]byte) (int, error) { return 0, b.err }
func (errBody) Close() error               { return nil }

// retryAfter parses the Retry-After of a 429 or 503 response: seconds or an
// HTTP date. It returns 0 when absent or unparsable.
func retryAfter(res *http.Response) time.Duration {
	if res.StatusCode != http.StatusTooManyRequests && res.StatusCode != http.StatusServiceUnavailable {
		return 0
	}
	v := res.Header["Retry-After"]
	if len(v) == 0 {
		return 0
	}
	if secs, err := strconv.Atoi(v[0]); err == nil {
		if secs < 0 {
			return 0
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v[0]); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
