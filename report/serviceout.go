package report

import (
	"fmt"
	"strings"

	"github.com/rollout-lab/rollout-lab/analysis"
)

// sentence is the report's line on the measured service-out.
func serviceOutSentence(s *analysis.ServiceOut, lang string) string {
	var b strings.Builder
	if lang == "ja" {
		fmt.Fprintf(&b, "サービスアウトの実測 (`%s`, %d 回): p50 %s, p99 %s → 推奨 preStop sleep %s (p99 の 2 倍を秒単位に切り上げ: 測定より遅いノードへの余裕)。",
			s.Metric, s.Count, formatSeconds(s.P50), formatSeconds(s.P99), s.RecommendedPreStop)
	} else {
		fmt.Fprintf(&b, "Measured service-out (`%s`, %d changes): p50 %s, p99 %s → recommended preStop sleep %s (p99 × 2, rounded up to whole seconds: margin for nodes slower than measured).",
			s.Metric, s.Count, formatSeconds(s.P50), formatSeconds(s.P99), s.RecommendedPreStop)
	}
	for _, m := range s.Also {
		what := map[string][2]string{
			analysis.LabServiceOutMetric: {"deletion to each node's rules letting the Pod go, read from the rules", "削除から各ノードのルールが Pod を外すまで (ルールから実測)"},
			analysis.KubeProxySyncMetric: {"kube-proxy's rule syncs", "kube-proxy のルール同期"},
		}[m.Metric]
		if lang == "ja" {
			fmt.Fprintf(&b, " %s (`%s`, %d 回): p50 %s, p99 %s。", what[1], m.Metric, m.Count, formatSeconds(m.P50), formatSeconds(m.P99))
		} else {
			fmt.Fprintf(&b, " Also %s (`%s`, %d): p50 %s, p99 %s.", what[0], m.Metric, m.Count, formatSeconds(m.P50), formatSeconds(m.P99))
		}
	}
	return b.String()
}

// formatSeconds writes seconds to the millisecond without trailing zeros: 1.049s, 3s.
func formatSeconds(v float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".") + "s"
}
