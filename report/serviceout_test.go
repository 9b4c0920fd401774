package report

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/plan"
)

func TestRecommendPreStopDoublesP99InWholeSeconds(t *testing.T) {
	for p99, want := range map[float64]time.Duration{0: time.Second, 0.3: time.Second, 0.95: 2 * time.Second, 1.2: 3 * time.Second, 4: 8 * time.Second} {
		if got := analysis.RecommendPreStop(p99); got != want {
			t.Errorf("p99 %gs: %s, want %s", p99, got, want)
		}
	}
}

func TestReportStatesServiceOutAndRecommendation(t *testing.T) {
	rep := fixtureReport()
	rep.ServiceOut = &analysis.ServiceOut{Metric: analysis.KubeProxyProgrammingMetric, Count: 48, P50: 0.412, P99: 0.95, RecommendedPreStop: plan.Duration(2 * time.Second),
		Also: []analysis.Measured{{Metric: analysis.LabServiceOutMetric, Count: 12, P50: 0.8, P99: 1.1}, {Metric: analysis.KubeProxySyncMetric, Count: 30, P50: 0.02, P99: 0.095}}}
	for lang, want := range map[string]string{
		"en": "Measured service-out (`kubeproxy_network_programming_duration_seconds`, 48 changes): p50 0.412s, p99 0.95s → recommended preStop sleep 2s (p99 × 2, rounded up to whole seconds: margin for nodes slower than measured). Also deletion to each node's rules letting the Pod go, read from the rules (`rolloutlab_lab_service_out_seconds`, 12): p50 0.8s, p99 1.1s. Also kube-proxy's rule syncs (`kubeproxy_sync_proxy_rules_duration_seconds`, 30): p50 0.02s, p99 0.095s.",
		"ja": "サービスアウトの実測 (`kubeproxy_network_programming_duration_seconds`, 48 回): p50 0.412s, p99 0.95s → 推奨 preStop sleep 2s (p99 の 2 倍を秒単位に切り上げ: 測定より遅いノードへの余裕)。 削除から各ノードのルールが Pod を外すまで (ルールから実測) (`rolloutlab_lab_service_out_seconds`, 12 回): p50 0.8s, p99 1.1s。 kube-proxy のルール同期",
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
