package lab

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
)

// Metrics are the lab's collectors: every recorded Pod lifecycle step, and the measured service-out latency.
type Metrics struct {
	Events     *prometheus.CounterVec
	EventTime  *prometheus.GaugeVec
	ServiceOut *prometheus.HistogramVec
	ModelBound *prometheus.GaugeVec
	// Pods counts the lab's Pods by state (starting, ready, not_ready, terminating), as kube-state-metrics would.
	Pods *prometheus.GaugeVec
	// The load balancers: backend connections opened, backend failures by class, and 502s sent (http mode).
	BalancerBackendConnections *prometheus.CounterVec
	BalancerBackendFailures    *prometheus.CounterVec
	Balancer502s               *prometheus.CounterVec
	// CPU reads the lab's cgroups (containers, nodes) and the machine's CPU pressure at each scrape.
	CPU *cgroups.Collector

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
		Pods: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "rolloutlab_lab_pods",
			Help: "The lab's Pods by state: starting, ready, not_ready, terminating.",
		}, []string{"namespace", "state"}),
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
		podState: map[string]podState{},
		CPU:      cgroups.NewCollector(),
	}
	reg.MustRegister(m.CPU, m.Events, m.EventTime, m.ServiceOut, m.ModelBound, m.Pods, m.BalancerBackendConnections, m.BalancerBackendFailures, m.Balancer502s)
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
