package admin

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlb/meshlb/lb"
)

// PoolCollector exports the services' pools, per-instance stats, serving
// tiers and Consul watch health to Prometheus, read from the balancers'
// long-lived stats and Service.Status at scrape time, so the request path
// pays nothing for them.
func (s *Server) PoolCollector() prometheus.Collector { return &poolCollector{services: s.services} }

type poolCollector struct{ services []Service }

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
		pool := s.Balancer.Pool()
		n := 0
		if pool != nil {
			n = len(pool.Instances)
			for _, in := range pool.Instances {
				collectInstance(ch, s.Name, in, now)
			}
		}
		ch <- prometheus.MustNewConstMetric(descPoolSize, prometheus.GaugeValue, float64(n), s.Name)
		if pool != nil {
			collectTiers(ch, s, pool)
		}
		if s.Status != nil {
			st := s.Status()
			ch <- prometheus.MustNewConstMetric(descWatchErr, prometheus.CounterValue, float64(st.Errors), s.Name)
			ch <- prometheus.MustNewConstMetric(descWatchIndex, prometheus.GaugeValue, float64(st.Index), s.Name)
			if !st.LastSuccess.IsZero() {
				ch <- prometheus.MustNewConstMetric(descStaleness, prometheus.GaugeValue, now.Sub(st.LastSuccess).Seconds(), s.Name)
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
func collectTiers(ch chan<- prometheus.Metric, s Service, pool *lb.Pool) {
	sv := s.Balancer.Serving()
	ch <- prometheus.MustNewConstMetric(descServing, prometheus.GaugeValue, 1, s.Name, sv.Tier.Name(), sv.Tier.Datacenter)
	ch <- prometheus.MustNewConstMetric(descServingIdx, prometheus.GaugeValue, float64(sv.Index), s.Name)
	if !sv.Since.IsZero() {
		ch <- prometheus.MustNewConstMetric(descServSince, prometheus.GaugeValue, float64(sv.Since.UnixNano())/1e9, s.Name)
	}
	ch <- prometheus.MustNewConstMetric(descSwitches, prometheus.CounterValue, float64(sv.Switches), s.Name)
	for _, t := range pool.Tiers() {
		ch <- prometheus.MustNewConstMetric(descTierSize, prometheus.GaugeValue, float64(t.Size), s.Name, t.Name(), t.Datacenter)
	}
	if s.Datacenters != nil {
		for _, dc := range s.Datacenters() {
			up := 0.0
			if dc.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descDCFailing, prometheus.GaugeValue, up, s.Name, dc.Datacenter)
		}
	}
}
