package lab

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Metrics are the lab's collectors: the Pods' lifecycle (the timeline's), the service-out model, the load
// balancers and the CPU accounting.
type Metrics struct {
	*timeline.Metrics
	ModelBound *prometheus.GaugeVec
	// The load balancers: backend connections opened, backend failures by class, and 502s sent (http mode).
	BalancerBackendConnections *prometheus.CounterVec
	BalancerBackendFailures    *prometheus.CounterVec
	Balancer502s               *prometheus.CounterVec
	// CPU reads the lab's cgroups (containers, nodes) and the machine's CPU pressure at each scrape.
	CPU *cgroups.Collector
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Metrics: timeline.NewMetrics(reg),
		ModelBound: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rolloutlab_lab_service_out_model_seconds",
			Help: "The lab's service-out model: per-node programming delay drawn uniformly between min and max.",
		}, []string{"bound"}),
		BalancerBackendConnections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rolloutlab_lab_lb_backend_connections_total",
			Help: "Backend connections the lab's load balancers opened (or tried to), by balancer mode.",
		}, []string{"mode"}),
		BalancerBackendFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rolloutlab_lab_lb_backend_failures_total",
			Help: "Backend connections of the lab's load balancers that failed (connect or mid-response), by mode and error class.",
		}, []string{"mode", "error"}),
		Balancer502s: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rolloutlab_lab_lb_502_total",
			Help: "502 Bad Gateway answers of the lab's http load balancers.",
		}, []string{"mode"}),
		CPU: cgroups.NewCollector(),
	}
	reg.MustRegister(m.CPU, m.ModelBound, m.BalancerBackendConnections, m.BalancerBackendFailures, m.Balancer502s)
	return m
}

// timeline gives the recorder the lifecycle metrics, or none.
func (m *Metrics) timeline() *timeline.Metrics {
	if m == nil {
		return nil
	}
	return m.Metrics
}
