package timeline

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names of the lifecycle metrics.
const (
	MetricEvents     = "rolloutlab_lab_pod_events_total"
	MetricEventTime  = "rolloutlab_lab_pod_event_timestamp_seconds"
	MetricServiceOut = "rolloutlab_lab_service_out_seconds"
	MetricPods       = "rolloutlab_lab_pods"
)

// Metrics count every recorded lifecycle step, the measured service-out latency, and the Pods by state.
type Metrics struct {
	Events     *prometheus.CounterVec
	EventTime  *prometheus.GaugeVec
	ServiceOut *prometheus.HistogramVec
	// Pods counts the Pods by state (starting, ready, not_ready, terminating), as kube-state-metrics would.
	Pods *prometheus.GaugeVec

	mu       sync.Mutex
	podState map[string]podState // by UID
}

type podState struct{ namespace, state string }

// podStateAfter maps a lifecycle step to the state it leaves the Pod in; "" leaves the state as it was.
func podStateAfter(event string) string {
	switch event {
	case EventPodCreated, EventContainerStart, EventRestarted:
		return "starting"
	case EventPodReady:
		return "ready"
	case EventPodNotReady:
		return "not_ready"
	case EventDeletionSeen:
		return "terminating"
	}
	return ""
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricEvents,
			Help: "Pod lifecycle steps the lab's node agent and dataplane recorded, by step.",
		}, []string{"event"}),
		EventTime: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricEventTime,
			Help: "Unix time of each Pod's lifecycle steps (node: where the Pod ran, or for service_out the proxy's node).",
		}, []string{"namespace", "pod", "node", "event"}),
		ServiceOut: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    MetricServiceOut,
			Help:    "Time from the node agent seeing a Pod's deletion to a node's proxy no longer routing to it.",
			Buckets: prometheus.ExponentialBucketsRange(0.005, 30, 40),
		}, []string{"node"}),
		Pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricPods,
			Help: "The lab's Pods by state: starting, ready, not_ready, terminating.",
		}, []string{"namespace", "state"}),
		podState: map[string]podState{},
	}
	reg.MustRegister(m.Events, m.EventTime, m.ServiceOut, m.Pods)
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
	m.trackPod(e)
}

func (m *Metrics) trackPod(e Event) {
	if e.UID == "" {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	old, known := m.podState[e.UID]
	next := podStateAfter(e.Type)
	switch {
	case e.Type == EventPodRemoved:
		if known {
			m.Pods.WithLabelValues(old.namespace, old.state).Dec()
			delete(m.podState, e.UID)
		}
		return
	case next == "" || (known && old.state == next), known && old.state == "terminating":
		return // a terminating Pod stays terminating until it is removed
	}
	if known {
		m.Pods.WithLabelValues(old.namespace, old.state).Dec()
	}
	m.podState[e.UID] = podState{e.Namespace, next}
	m.Pods.WithLabelValues(e.Namespace, next).Inc()
}
