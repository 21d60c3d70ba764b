package proxy

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RequestMetrics counts and times the requests a listener serves, by
// listener and status code (meshlb_http_requests_total,
// meshlb_http_request_duration_seconds). Register it with a Prometheus
// registry; Instrument wraps a listener's handler and Observer feeds the
// event loops (LoopOptions.Observe), so both paths count alike.
type RequestMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewRequestMetrics makes the request metrics.
func NewRequestMetrics() *RequestMetrics {
	return &RequestMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlb_http_requests_total",
			Help: "Requests served by the agent, by listener and status code.",
		}, []string{"listener", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshlb_http_request_duration_seconds",
			Help:    "Time from request to the end of the response, by listener.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"listener"}),
	}
}

// Describe implements prometheus.Collector.
func (m *RequestMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.requests.Describe(ch)
	m.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *RequestMetrics) Collect(ch chan<- prometheus.Metric) {
	m.requests.Collect(ch)
	m.duration.Collect(ch)
}

// Instrument wraps a listener's handler to count requests and time them.
func (m *RequestMetrics) Instrument(listener string, next http.Handler) http.Handler {
	observe := m.Observer(listener)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := statusWriter{ResponseWriter: w}
		next.ServeHTTP(&sw, r)
		observe(sw.status, time.Since(start))
	})
}

// Observer returns what counts and times one request of a listener: the
// handler's wrapper, and the event loops for the cache hits they answer
// themselves (LoopOptions.Observe).
func (m *RequestMetrics) Observer(listener string) func(status int, elapsed time.Duration) {
	codes := map[int]prometheus.Counter{}
	for _, c := range []int{200, 201, 204, 301, 302, 304, 400, 404, 431, 499, 500, 502, 503, 504} {
		codes[c] = m.requests.WithLabelValues(listener, strconv.Itoa(c))
	}
	hist := m.duration.WithLabelValues(listener)
	return func(code int, elapsed time.Duration) {
		if code == 0 {
			code = http.StatusOK
		}
		if c, ok := codes[code]; ok {
			c.Inc()
		} else {
			m.requests.WithLabelValues(listener, strconv.Itoa(code)).Inc()
		}
		hist.Observe(elapsed.Seconds())
	}
}

// statusWriter records the status code; it keeps Flush, Hijack and Unwrap
// working so streaming and upgrades pass through.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.status = http.StatusSwitchingProtocols
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
