package analysis

import (
	"context"
	"fmt"
	"math"
	"strings"
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
}

// RecommendPreStop is p99 × 2 rounded up to whole seconds, at least 1 s: the margin covers nodes that sync later
// under load than measured, since the sleep must outlast the slowest node.
func RecommendPreStop(p99 float64) time.Duration {
	return time.Duration(math.Max(1, math.Ceil(2*p99))) * time.Second
}

// MeasureServiceOut reads the first service-out histogram Prometheus has over the window (kube-proxy's on a cluster,
// the lab's own); nil when neither has an observation.
func MeasureServiceOut(ctx context.Context, api promv1.API, w Window, now time.Time) (*ServiceOut, error) {
	for _, metric := range []string{KubeProxyProgrammingMetric, LabServiceOutMetric} {
		q := ServiceOutQueriesFor(metric, w)
		count, err := queryScalar(ctx, api, q.Count, now)
		if err != nil {
			return nil, err
		}
		if math.IsNaN(count) || count < 1 {
			continue
		}
		s := &ServiceOut{Metric: metric, Count: uint64(math.Round(count))}
		if s.P50, err = queryScalar(ctx, api, q.Quantile(0.5), now); err != nil {
			return nil, err
		}
		if s.P99, err = queryScalar(ctx, api, q.Quantile(0.99), now); err != nil {
			return nil, err
		}
		s.RecommendedPreStop = plan.Duration(RecommendPreStop(s.P99))
		return s, nil
	}
	return nil, nil
}

// sentence is the report's line on the measured service-out.
func (s *ServiceOut) sentence(lang string) string {
	if lang == "ja" {
		return fmt.Sprintf("サービスアウトの実測 (`%s`, %d 回): p50 %s, p99 %s → 推奨 preStop sleep %s (p99 の 2 倍を秒単位に切り上げ: 測定より遅いノードへの余裕)。",
			s.Metric, s.Count, formatSeconds(s.P50), formatSeconds(s.P99), s.RecommendedPreStop)
	}
	return fmt.Sprintf("Measured service-out (`%s`, %d changes): p50 %s, p99 %s → recommended preStop sleep %s (p99 × 2, rounded up to whole seconds: margin for nodes slower than measured).",
		s.Metric, s.Count, formatSeconds(s.P50), formatSeconds(s.P99), s.RecommendedPreStop)
}

// formatSeconds writes seconds to the millisecond without trailing zeros: 1.049s, 3s.
func formatSeconds(v float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".") + "s"
}
