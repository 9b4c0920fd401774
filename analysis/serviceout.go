package analysis

import (
	"context"
	"math"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"

	"github.com/rollout-lab/rollout-lab/plan"
)

// ServiceOut is the measured time from a Pod's change to a node no longer sending it new connections, and the
// preStop sleep that outlasts it.
type ServiceOut struct {
	Metric string  `json:"metric"`
	Count  uint64  `json:"count"`
	P50    float64 `json:"p50Seconds"`
	P99    float64 `json:"p99Seconds"`
	// RecommendedPreStop is the p99 doubled, rounded up to whole seconds (what a preStop sleep takes).
	RecommendedPreStop plan.Duration `json:"recommendedPreStopSleep"`
	// Also are the other latencies measured over the window: on the lab, service-out read from each node's rules
	// per Pod, and kube-proxy's own rule syncs.
	Also []Measured `json:"also,omitempty"`
}

// Measured is a latency histogram's observations and quantiles over a window.
type Measured struct {
	Metric string  `json:"metric"`
	Count  uint64  `json:"count"`
	P50    float64 `json:"p50Seconds"`
	P99    float64 `json:"p99Seconds"`
}

// Measure reads a histogram's count, p50 and p99 over the window; nil without an observation.
func Measure(ctx context.Context, api promv1.API, metric string, w Window, now time.Time) (*Measured, error) {
	q := ServiceOutQueriesFor(metric, w)
	count, err := queryScalar(ctx, api, q.Count, now)
	if err != nil || math.IsNaN(count) || count < 1 {
		return nil, err
	}
	m := &Measured{Metric: metric, Count: uint64(math.Round(count))}
	if m.P50, err = queryScalar(ctx, api, q.Quantile(0.5), now); err != nil {
		return nil, err
	}
	if m.P99, err = queryScalar(ctx, api, q.Quantile(0.99), now); err != nil {
		return nil, err
	}
	return m, nil
}

// RecommendPreStop is p99 × 2 rounded up to whole seconds, at least 1 s: the margin covers nodes that sync later
// under load than measured, since the sleep must outlast the slowest node.
func RecommendPreStop(p99 float64) time.Duration {
	return time.Duration(math.Max(1, math.Ceil(2*p99))) * time.Second
}

// MeasureServiceOut reads the first service-out histogram Prometheus has over the window (kube-proxy's on a cluster,
// the lab's own); nil when neither has an observation.
func MeasureServiceOut(ctx context.Context, api promv1.API, w Window, now time.Time) (*ServiceOut, error) {
	var out *ServiceOut
	for _, metric := range []string{KubeProxyProgrammingMetric, LabServiceOutMetric, KubeProxySyncMetric} {
		m, err := Measure(ctx, api, metric, w, now)
		if err != nil {
			return nil, err
		}
		switch {
		case m == nil:
		case out == nil && metric != KubeProxySyncMetric:
			out = &ServiceOut{Metric: m.Metric, Count: m.Count, P50: m.P50, P99: m.P99, RecommendedPreStop: plan.Duration(RecommendPreStop(m.P99))}
		case out != nil:
			out.Also = append(out.Also, *m)
		}
	}
	return out, nil
}
