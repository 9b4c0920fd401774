package analysis

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/plan"
)

func TestRecommendPreStopDoublesP99InWholeSeconds(t *testing.T) {
	for p99, want := range map[float64]time.Duration{0: time.Second, 0.3: time.Second, 0.95: 2 * time.Second, 1.2: 3 * time.Second, 4: 8 * time.Second} {
		if got := RecommendPreStop(p99); got != want {
			t.Errorf("p99 %gs: %s, want %s", p99, got, want)
		}
	}
}

func TestReportStatesServiceOutAndRecommendation(t *testing.T) {
	rep := fixtureReport()
	rep.ServiceOut = &ServiceOut{Metric: KubeProxyProgrammingMetric, Count: 48, P50: 0.412, P99: 0.95, RecommendedPreStop: plan.Duration(2 * time.Second)}
	for lang, want := range map[string]string{
		"en": "Measured service-out (`kubeproxy_network_programming_duration_seconds`, 48 changes): p50 0.412s, p99 0.95s → recommended preStop sleep 2s (p99 × 2, rounded up to whole seconds",
		"ja": "サービスアウトの実測 (`kubeproxy_network_programming_duration_seconds`, 48 回): p50 0.412s, p99 0.95s → 推奨 preStop sleep 2s",
	} {
		var md bytes.Buffer
		if err := WriteMarkdown(&md, rep, lang); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(md.String(), want) {
			t.Errorf("%s:\n%s", lang, md.String())
		}
	}
}
