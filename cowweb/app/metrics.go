package app

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Phases of the shutdown state set exported as cowweb_shutdown_phase{phase=...}.
const (
	PhaseServing  = "serving"
	PhaseDraining = "draining"
	PhaseClosing  = "closing"
)

var phases = []string{PhaseServing, PhaseDraining, PhaseClosing}

// Metrics are the app's collectors; they live on the registry given to NewMetrics.
type Metrics struct {
	Requests               *prometheus.CounterVec
	InFlight               prometheus.Gauge
	Duration               *prometheus.HistogramVec
	SigtermReceived        prometheus.Gauge
	ListenerClosed         prometheus.Gauge
	LastRequestFinished    prometheus.Gauge
	Phase                  *prometheus.GaugeVec
	DrainDelayConfigured   prometheus.Gauge
	ShutdownTimeoutSeconds prometheus.Gauge
}

// NewMetrics creates the collectors and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cowweb_http_requests_total",
			Help: "HTTP requests served, by handler and status code.",
		}, []string{"handler", "code"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cowweb_http_requests_in_flight",
			Help: "HTTP requests being served right now.",
		}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "cowweb_http_request_duration_seconds",
			Help: "Time from reading the request to writing the response.",
			// 1 ms .. 30 s in 30 exponential steps: fine enough for p99 at the latencies the CPU knob produces.
			Buckets:                         prometheus.ExponentialBucketsRange(0.001, 30, 30),
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"handler"}),
		SigtermReceived: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cowweb_shutdown_sigterm_received_timestamp_seconds",
			Help: "Unix time the process received SIGTERM (0 while it has not).",
		}),
		ListenerClosed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cowweb_shutdown_listener_closed_timestamp_seconds",
			Help: "Unix time the server stopped accepting connections (0 while it accepts).",
		}),
		LastRequestFinished: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cowweb_last_request_finished_timestamp_seconds",
			Help: "Unix time the most recent request finished.",
		}),
		Phase: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cowweb_shutdown_phase",
			Help: "1 for the phase the server is in: serving, draining (SIGTERM seen, still accepting) or closing.",
		}, []string{"phase"}),
		DrainDelayConfigured: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cowweb_shutdown_drain_delay_seconds",
			Help: "Configured drain delay: how long the server keeps accepting after SIGTERM.",
		}),
		ShutdownTimeoutSeconds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "cowweb_shutdown_timeout_seconds",
			Help: "Configured bound on a graceful shutdown before open connections are closed.",
		}),
	}
	reg.MustRegister(m.Requests, m.InFlight, m.Duration, m.SigtermReceived, m.ListenerClosed,
		m.LastRequestFinished, m.Phase, m.DrainDelayConfigured, m.ShutdownTimeoutSeconds)
	m.setPhase(PhaseServing)
	return m
}

func (m *Metrics) setPhase(current string) {
	for _, p := range phases {
		v := 0.0
		if p == current {
			v = 1
		}
		m.Phase.WithLabelValues(p).Set(v)
	}
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
