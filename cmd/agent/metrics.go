package main

import (
	"bufio"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlb/meshlb/lb"
)

// metrics are the agent's Prometheus metrics. Request metrics are recorded
// per listener; pool and per-instance metrics are read from the balancers'
// long-lived stats at scrape time, so the request path pays nothing for them.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(services []*serviceState) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
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
	m.reg.MustRegister(m.requests, m.duration, &poolCollector{services: services},
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

// instrument wraps a listener's handler to count requests and time them.
func (m *metrics) instrument(listener string, next http.Handler) http.Handler {
	observe := m.observer(listener)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := statusWriter{ResponseWriter: w}
		next.ServeHTTP(&sw, r)
		observe(sw.status, time.Since(start))
	})
}

// observer returns what counts and times one request of a listener: the
// handler's wrapper, and the event loops for the cache hits they answer
// themselves (proxy.LoopOptions.Observe).
func (m *metrics) observer(listener string) func(status int, elapsed time.Duration) {
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

// poolCollector exports pools, per-instance stats and Consul watch health.
type poolCollector struct{ services []*serviceState }

var (
	descPoolSize   = prometheus.NewDesc("meshlb_pool_instances", "Instances in the service's pool.", []string{"service"}, nil)
	descInFlight   = prometheus.NewDesc("meshlb_instance_in_flight", "Requests in flight to the instance.", []string{"service", "instance"}, nil)
	descInstReq    = prometheus.NewDesc("meshlb_instance_requests_total", "Attempts sent to the instance.", []string{"service", "instance"}, nil)
	descInstFail   = prometheus.NewDesc("meshlb_instance_failures_total", "Failed attempts on the instance.", []string{"service", "instance"}, nil)
	descEjected    = prometheus.NewDesc("meshlb_instance_ejected", "1 while passive health ejects the instance.", []string{"service", "instance"}, nil)
	descDraining   = prometheus.NewDesc("meshlb_instance_draining", "1 while the instance is draining.", []string{"service", "instance"}, nil)
	descWatchErr   = prometheus.NewDesc("meshlb_consul_watch_errors_total", "Failed Consul queries of the service's watch.", []string{"service"}, nil)
	descStaleness  = prometheus.NewDesc("meshlb_consul_staleness_seconds", "Seconds since the service's watch last heard from Consul.", []string{"service"}, nil)
	descWatchIndex = prometheus.NewDesc("meshlb_consul_index", "Last Consul index seen by the service's watch.", []string{"service"}, nil)
	descServing    = prometheus.NewDesc("meshlb_serving_tier", "1 for the tier (primary or backup) and datacenter that take the service's new requests.", []string{"service", "tier", "datacenter"}, nil)
	descServingIdx = prometheus.NewDesc("meshlb_serving_tier_index", "Position of the serving tier: 0 the local primaries, higher a backup or failover tier.", []string{"service"}, nil)
	descServSince  = prometheus.NewDesc("meshlb_serving_tier_since_seconds", "Unix time at which the serving tier began to serve.", []string{"service"}, nil)
	descSwitches   = prometheus.NewDesc("meshlb_tier_switches_total", "Switches of the serving tier (to backups, to another datacenter and back).", []string{"service"}, nil)
	descTierSize   = prometheus.NewDesc("meshlb_tier_instances", "Instances in each tier of the service's pool.", []string{"service", "tier", "datacenter"}, nil)
	descDCFailing  = prometheus.NewDesc("meshlb_failover_datacenter_up", "1 while the failover datacenter's Consul reads succeed (its instances count), 0 while they fail.", []string{"service", "datacenter"}, nil)
)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPoolSize, descInFlight, descInstReq, descInstFail, descEjected, descDraining, descWatchErr, descStaleness, descWatchIndex,
		descServing, descServingIdx, descServSince, descSwitches, descTierSize, descDCFailing} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	for _, s := range c.services {
		pool := s.balancer.Pool()
		n := 0
		if pool != nil {
			n = len(pool.Instances)
			for _, in := range pool.Instances {
				collectInstance(ch, s.name, in, now)
			}
		}
		ch <- prometheus.MustNewConstMetric(descPoolSize, prometheus.GaugeValue, float64(n), s.name)
		if pool != nil {
			collectTiers(ch, s, pool)
		}
		if s.watcher != nil {
			st := s.watcher.Status()
			ch <- prometheus.MustNewConstMetric(descWatchErr, prometheus.CounterValue, float64(st.Errors), s.name)
			ch <- prometheus.MustNewConstMetric(descWatchIndex, prometheus.GaugeValue, float64(st.Index), s.name)
			if !st.LastSuccess.IsZero() {
				ch <- prometheus.MustNewConstMetric(descStaleness, prometheus.GaugeValue, now.Sub(st.LastSuccess).Seconds(), s.name)
			}
		}
	}
}

func collectInstance(ch chan<- prometheus.Metric, service string, in *lb.Instance, now time.Time) {
	st := in.Stats
	if st == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(st.InFlight.Load()), service, in.ID)
	ch <- prometheus.MustNewConstMetric(descInstReq, prometheus.CounterValue, float64(st.Requests.Load()), service, in.ID)
	ch <- prometheus.MustNewConstMetric(descInstFail, prometheus.CounterValue, float64(st.Failures.Load()), service, in.ID)
	ej := 0.0
	if st.EjectedUntil.Load() > now.UnixNano() {
		ej = 1
	}
	ch <- prometheus.MustNewConstMetric(descEjected, prometheus.GaugeValue, ej, service, in.ID)
	dr := 0.0
	if st.Draining.Load() {
		dr = 1
	}
	ch <- prometheus.MustNewConstMetric(descDraining, prometheus.GaugeValue, dr, service, in.ID)
}

// collectTiers exports the serving tier and the tiers' sizes.
func collectTiers(ch chan<- prometheus.Metric, s *serviceState, pool *lb.Pool) {
	sv := s.balancer.Serving()
	ch <- prometheus.MustNewConstMetric(descServing, prometheus.GaugeValue, 1, s.name, sv.Tier.Name(), sv.Tier.Datacenter)
	ch <- prometheus.MustNewConstMetric(descServingIdx, prometheus.GaugeValue, float64(sv.Index), s.name)
	if !sv.Since.IsZero() {
		ch <- prometheus.MustNewConstMetric(descServSince, prometheus.GaugeValue, float64(sv.Since.UnixNano())/1e9, s.name)
	}
	ch <- prometheus.MustNewConstMetric(descSwitches, prometheus.CounterValue, float64(sv.Switches), s.name)
	for _, t := range pool.Tiers() {
		ch <- prometheus.MustNewConstMetric(descTierSize, prometheus.GaugeValue, float64(t.Size), s.name, t.Name(), t.Datacenter)
	}
	if f := s.tiers.failover; f != nil {
		for _, dc := range f.Datacenters() {
			up := 1.0
			if dc.Failing {
				up = 0
			}
			ch <- prometheus.MustNewConstMetric(descDCFailing, prometheus.GaugeValue, up, s.name, dc.Datacenter)
		}
	}
}
