package lab

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/lab/loadbalancer"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Metrics are the lab's collectors: the Pods' lifecycle (the timeline's), the nodes' kube-proxy settings, the load
// balancers and the CPU accounting. kube-proxy's own metrics are scraped from each node's :10249.
type Metrics struct {
	*timeline.Metrics
	KubeProxySetting *prometheus.GaugeVec
	LoadBalancer     *loadbalancer.Metrics
	// CPU reads the lab's cgroups (containers, nodes) and the machine's CPU pressure at each scrape.
	CPU *cgroups.Collector
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Metrics: timeline.NewMetrics(reg),
		KubeProxySetting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rolloutlab_lab_kube_proxy_setting_seconds",
			Help: "The nodes' kube-proxy configuration: minSyncPeriod and syncPeriod, in the mode it runs.",
		}, []string{"mode", "setting"}),
		LoadBalancer: loadbalancer.NewMetrics(reg),
		CPU:          cgroups.NewCollector(),
	}
	reg.MustRegister(m.CPU, m.KubeProxySetting)
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
