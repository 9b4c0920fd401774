package lab

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the lab's collectors: every recorded Pod lifecycle step, and the measured service-out latency.
type Metrics struct {
	Events     *prometheus.CounterVec
	EventTime  *prometheus.GaugeVec
	ServiceOut *prometheus.HistogramVec
	ModelBound *prometheus.GaugeVec
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rolloutlab_lab_pod_events_total",
			Help: "Pod lifecycle steps the lab's node agent and dataplane recorded, by step.",
		}, []string{"event"}),
		EventTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rolloutlab_lab_pod_event_timestamp_seconds",
			Help: "Unix time of each Pod's lifecycle steps (node: where the Pod ran, or for service_out the proxy's node).",
		}, []string{"namespace", "pod", "node", "event"}),
		ServiceOut: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "rolloutlab_lab_service_out_seconds",
			Help:    "Time from the node agent seeing a Pod's deletion to a node's proxy no longer routing to it.",
			Buckets: prometheus.ExponentialBucketsRange(0.005, 30, 40),
		}, []string{"node"}),
		ModelBound: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rolloutlab_lab_service_out_model_seconds",
			Help: "The lab's service-out model: per-node programming delay drawn uniformly between min and max.",
		}, []string{"bound"}),
	}
	reg.MustRegister(m.Events, m.EventTime, m.ServiceOut, m.ModelBound)
	return m
}

func (m *Metrics) observe(e Event) {
	if m == nil {
		return
	}
	m.Events.WithLabelValues(e.Type).Inc()
	m.EventTime.WithLabelValues(e.Namespace, e.Pod, e.Node, e.Type).Set(float64(e.Time.UnixNano()) / 1e9)
	if e.Type == EventServiceOut && e.SinceDeletion > 0 {
		m.ServiceOut.WithLabelValues(e.Node).Observe(e.SinceDeletion.Seconds())
	}
}
