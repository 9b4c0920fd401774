package loadbalancer

import "github.com/prometheus/client_golang/prometheus"

// Metrics count what the balancers do to connections: backend connections opened, backend failures by class, and
// 502s sent (http mode).
type Metrics struct {
	BackendConnections *prometheus.CounterVec
	BackendFailures    *prometheus.CounterVec
	Responses502       *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		BackendConnections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rolloutlab_lab_lb_backend_connections_total",
			Help: "Backend connections the lab's load balancers opened (or tried to), by balancer mode.",
		}, []string{"mode"}),
		BackendFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rolloutlab_lab_lb_backend_failures_total",
			Help: "Backend connections of the lab's load balancers that failed (connect or mid-response), by mode and error class.",
		}, []string{"mode", "error"}),
		Responses502: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rolloutlab_lab_lb_502_total",
			Help: "502 Bad Gateway answers of the lab's http load balancers.",
		}, []string{"mode"}),
	}
	reg.MustRegister(m.BackendConnections, m.BackendFailures, m.Responses502)
	return m
}
