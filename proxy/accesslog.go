package proxy

import (
	"time"
)

// logAccess writes the request's access log line at Info.
func (x *exchange) logAccess() {
	x.p.log.Info("request", x.accessArgs()...)
}

// accessArgs are the fields of the request's access log line.
func (x *exchange) accessArgs() []any {
	r := x.r
	args := make([]any, 0, 28)
	args = append(args,
		"method", r.Method,
		"host", r.Host,
		"path", r.URL.Path,
		"status", x.status,
		"bytes", x.written,
		"duration", time.Since(x.start),
		"client", r.RemoteAddr,
	)
	if x.route != nil {
		args = append(args, "service", x.route.service, "attempts", x.attempts)
	}
	if x.inst != nil {
		args = append(args, "instance", x.inst.ID)
	}
	if cs := x.CacheStatus(); cs != "" {
		args = append(args, "cache", cs)
	}
	if x.grpcStatus != "" {
		args = append(args, "grpc_status", x.grpcStatus)
	}
	if tid := x.traceID(); tid != "" {
		args = append(args, "trace_id", tid)
	}
	if x.err != nil {
		args = append(args, "error", x.err)
	}
	return args
}

// traceID is the request's trace id: the server span's when tracing, else
// the one in the client's traceparent, read as plain text.
func (x *exchange) traceID() string {
	if x.span != nil {
		if sc := x.span.SpanContext(); sc.IsValid() {
			return sc.TraceID().String()
		}
		return ""
	}
	if x.rec != nil {
		return x.rec.TraceID.String()
	}
	if v := x.r.Header["Traceparent"]; len(v) > 0 && len(v[0]) >= 55 && v[0][2] == '-' && v[0][35] == '-' {
		return v[0][3:35]
	}
	return ""
}
