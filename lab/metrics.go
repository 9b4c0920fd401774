package lab

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/lab/loadbalancer"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Metrics are the lab's collectors: the Pods' lifecycle (the timeline's), the service-out model, the load
// balancers and the CPU accounting.
type Metrics struct {
	*timeline.Metrics
	ModelBound   *prometheus.GaugeVec
	LoadBalancer *loadbalancer.Metrics
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
		LoadBalancer: loadbalancer.NewMetrics(reg),
		CPU:          cgroups.NewCollector(),
	}
	reg.MustRegister(m.CPU, m.ModelBound)
	return m
}

// timeline gives the recorder the lifecycle metrics, or none.
func (m *Metrics) timeline() *timeline.Metrics {
	if m == nil {
		return nil
	}
	return m.Metrics
}

// loadBalancer gives the balancers their metrics, or none.
func (m *Metrics) loadBalancer() *loadbalancer.Metrics {
	if m == nil {
		return nil
	}
	return m.LoadBalancer
}
