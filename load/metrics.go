package load

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Phase markers: timestamp gauges that PromQL and Grafana window on.
const (
	PhaseLoadStart       = "load_start"
	PhaseLoadEnd         = "load_end"
	PhaseRolloutStart    = "rollout_start"
	PhaseRolloutComplete = "rollout_complete"
)

// Labels identify one run of one case of a plan.
type Labels struct {
	Plan, Case, Run string
}

func (l Labels) values(extra ...string) []string {
	return append([]string{l.Plan, l.Case, l.Run}, extra...)
}

var runLabels = []string{"plan", "case", "run"}

// LatencyBuckets are the classic histogram buckets: 1 ms to 30 s in 60 exponential steps (about 19 % apart), fine
// enough for p99 at the latencies the CPU knob produces.
var LatencyBuckets = prometheus.ExponentialBucketsRange(0.001, 30, 60)

// Metrics are the load generator's collectors.
type Metrics struct {
	Requests   *prometheus.CounterVec
	Sent       *prometheus.CounterVec
	Planned    *prometheus.GaugeVec
	Latency    *prometheus.HistogramVec
	InFlight   *prometheus.GaugeVec
	TargetRate *prometheus.GaugeVec
	Phase      *prometheus.GaugeVec
	// Lateness is how far behind its schedule each hit went out: an attacker that cannot keep up (a starved CPU)
	// sends late, and the load is then not the planned one.
	Lateness *prometheus.HistogramVec
}

// Metric names: the collectors below and every query (analysis, workers, dashboards' tests) use these.
const (
	MetricRequests       = "rolloutlab_requests_total"
	MetricSent           = "rolloutlab_requests_sent_total"
	MetricPlanned        = "rolloutlab_requests_planned"
	MetricLatency        = "rolloutlab_request_duration_seconds"
	MetricInFlight       = "rolloutlab_requests_in_flight"
	MetricTargetRate     = "rolloutlab_target_arrival_rate"
	MetricPhaseTimestamp = "rolloutlab_phase_timestamp_seconds"
	MetricLateness       = "rolloutlab_send_lateness_seconds"
)

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests,
			Help: "Requests completed, by HTTP status (0: no response) and error class (none, refused, reset, eof, timeout, http_4xx, http_5xx, other).",
		}, append(runLabels[:3:3], "code", "error")),
		Sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricSent,
			Help: "Requests the attacker started.",
		}, runLabels),
		Planned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricPlanned,
			Help: "Requests the arrival-rate schedule sends in all.",
		}, runLabels),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            MetricLatency,
			Help:                            "Time from sending a request to the end of its response or its failure, by error class.",
			Buckets:                         LatencyBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  200,
			NativeHistogramMinResetDuration: time.Hour,
		}, append(runLabels[:3:3], "error")),
		InFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricInFlight,
			Help: "Requests sent and not yet completed.",
		}, runLabels),
		TargetRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricTargetRate,
			Help: "Arrivals per second the schedule asks for right now.",
		}, runLabels),
		Phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: MetricPhaseTimestamp,
			Help: "Unix time a phase of the experiment began: load_start, load_end, rollout_start, rollout_complete.",
		}, append(runLabels[:3:3], "phase")),
	}
	m.Lateness = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricLateness,
		Help:    "How long after its scheduled time each request was sent.",
		Buckets: LatencyBuckets,
	}, runLabels)
	reg.MustRegister(m.Requests, m.Sent, m.Planned, m.Latency, m.InFlight, m.TargetRate, m.Phase, m.Lateness)
	return m
}

// MarkPhase records when a phase began.
func (m *Metrics) MarkPhase(l Labels, phase string, at time.Time) {
	m.Phase.WithLabelValues(l.values(phase)...).Set(float64(at.UnixNano()) / 1e9)
}
