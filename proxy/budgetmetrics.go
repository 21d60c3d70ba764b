package proxy

import "github.com/prometheus/client_golang/prometheus"

// NewBudgetCollector exports the retry budget and per-try timeout of
// every service, summed over the proxies (one per listener), read at
// scrape time.
func NewBudgetCollector(proxies []*Proxy) prometheus.Collector {
	return &budgetCollector{proxies: proxies}
}

type budgetCollector struct{ proxies []*Proxy }

var (
	descBudgetRequests = prometheus.NewDesc("meshlb_retry_budget_requests_total",
		"Requests counted into the service's retry budget.", []string{"service"}, nil)
	descBudgetExtra = prometheus.NewDesc("meshlb_retry_budget_attempts_total",
		"Extra attempts by kind: retry (after a failure) and hedge (after the per-try timeout) are taken from the budget; unbudgeted (after a connect failure or the instance leaving the pool) never are.",
		[]string{"service", "kind"}, nil)
	descBudgetRefused = prometheus.NewDesc("meshlb_retry_budget_refused_total",
		"Retries and hedges the retry budget refused (20% of requests over 10s, plus 10 a second).", []string{"service"}, nil)
	descBudgetAvailable = prometheus.NewDesc("meshlb_retry_budget_available",
		"Retries and hedges the retry budget would grant now.", []string{"service"}, nil)
	descTryTimeout = prometheus.NewDesc("meshlb_try_timeout_seconds",
		"The per-try timeout after which an idempotent request is hedged (0: off).", []string{"service"}, nil)
)

func (c *budgetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descBudgetRequests, descBudgetExtra, descBudgetRefused, descBudgetAvailable, descTryTimeout} {
		ch <- d
	}
}

func (c *budgetCollector) Collect(ch chan<- prometheus.Metric) {
	sum := map[string]*BudgetStats{}
	var order []string
	for _, p := range c.proxies {
		for _, st := range p.BudgetStats() {
			t := sum[st.Service]
			if t == nil {
				t = &BudgetStats{Service: st.Service, TryTimeout: st.TryTimeout}
				sum[st.Service] = t
				order = append(order, st.Service)
			}
			t.Requests += st.Requests
			t.Retries += st.Retries
			t.Hedges += st.Hedges
			t.Unbudgeted += st.Unbudgeted
			t.Refused += st.Refused
			t.Available += st.Available
		}
	}
	for _, name := range order {
		t := sum[name]
		ch <- prometheus.MustNewConstMetric(descBudgetRequests, prometheus.CounterValue, float64(t.Requests), name)
		ch <- prometheus.MustNewConstMetric(descBudgetExtra, prometheus.CounterValue, float64(t.Retries), name, "retry")
		ch <- prometheus.MustNewConstMetric(descBudgetExtra, prometheus.CounterValue, float64(t.Hedges), name, "hedge")
		ch <- prometheus.MustNewConstMetric(descBudgetExtra, prometheus.CounterValue, float64(t.Unbudgeted), name, "unbudgeted")
		ch <- prometheus.MustNewConstMetric(descBudgetRefused, prometheus.CounterValue, float64(t.Refused), name)
		ch <- prometheus.MustNewConstMetric(descBudgetAvailable, prometheus.GaugeValue, t.Available, name)
		ch <- prometheus.MustNewConstMetric(descTryTimeout, prometheus.GaugeValue, t.TryTimeout.Seconds(), name)
	}
}
