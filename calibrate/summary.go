package calibrate

import (
	"fmt"
	"io"
	"strings"

	"github.com/rollout-lab/rollout-lab/plan"
)

// WriteSummary writes the profile as a short Markdown summary (lang "en" or "ja"): what was measured where, the
// service-out per node, and the recommended preStop sleep with its margin.
func WriteSummary(w io.Writer, p *plan.Profile, profileFile, lang string) error {
	var b strings.Builder
	out := p.ServiceOut
	kp := p.KubeProxy
	ja := lang == "ja"
	if ja {
		fmt.Fprintf(&b, "## クラスタープロファイル: %s\n\n", p.Name)
		fmt.Fprintf(&b, "%s に %s (%d CPU) から計測。ノード %d 台 (Kubernetes %s)、Service %d 個、エンドポイント %d 個。\n\n",
			p.MeasuredAt.Format("2006-01-02 15:04 MST"), p.MeasuredFrom.Host, p.MeasuredFrom.CPUs, p.Cluster.Nodes, p.Cluster.Version, p.Cluster.Services, p.Cluster.Endpoints)
		fmt.Fprintf(&b, "kube-proxy: %s モード、minSyncPeriod %s、syncPeriod %s (%s)。", kp.Mode, kp.MinSyncPeriod, kp.SyncPeriod, kp.Source)
	} else {
		fmt.Fprintf(&b, "## Cluster profile: %s\n\n", p.Name)
		fmt.Fprintf(&b, "Measured %s from %s (%d CPUs): %d nodes (Kubernetes %s), %d Services, %d endpoints.\n\n",
			p.MeasuredAt.Format("2006-01-02 15:04 MST"), p.MeasuredFrom.Host, p.MeasuredFrom.CPUs, p.Cluster.Nodes, p.Cluster.Version, p.Cluster.Services, p.Cluster.Endpoints)
		fmt.Fprintf(&b, "kube-proxy: %s mode, minSyncPeriod %s, syncPeriod %s (%s).", kp.Mode, kp.MinSyncPeriod, kp.SyncPeriod, kp.Source)
	}
	if pr := kp.Programming; pr != nil {
		if ja {
			fmt.Fprintf(&b, " kube-proxy 自身のプログラミング遅延 (`kubeproxy_network_programming_duration_seconds`, %d 回): p50 %s、p99 %s。", pr.Samples, pr.P50, pr.P99)
		} else {
			fmt.Fprintf(&b, " kube-proxy's own programming latency (`kubeproxy_network_programming_duration_seconds`, %d): p50 %s, p99 %s.", pr.Samples, pr.P50, pr.P99)
		}
	}
	b.WriteString("\n\n")
	if ja {
		fmt.Fprintf(&b, "サービスアウト (Pod 削除から、経路 (%s) を通る新しい接続が削除した Pod に届かなくなるまで、削除 %d 回):\n\n", via(out), out.Deletions)
		b.WriteString("| 経路 | 観測数 | p50 | p90 | p99 | 最大 |\n|---|--:|--:|--:|--:|--:|\n")
	} else {
		fmt.Fprintf(&b, "Service-out (from a Pod's deletion until new connections through %s no longer reach it; %d deletions):\n\n", via(out), out.Deletions)
		b.WriteString("| Through | Samples | p50 | p90 | p99 | Max |\n|---|--:|--:|--:|--:|--:|\n")
	}
	row := func(name string, q plan.Quantiles) {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s |\n", name, q.Samples, q.P50, q.P90, q.P99, q.Max)
	}
	for _, n := range out.Nodes {
		row(n.Node, n.Quantiles)
	}
	row(map[bool]string{true: "全体", false: "all"}[ja], out.All)
	if ja {
		fmt.Fprintf(&b, "\n**推奨 preStop sleep: %s** — 計測した最長のサービスアウト (%s) を秒に切り上げ、余裕 %s を足したもの。ラボで演じるには計画に `lab: {profile: %s}`。\n",
			out.Recommend.PreStopSleep, out.All.Max, out.Recommend.Margin, profileFile)
	} else {
		fmt.Fprintf(&b, "\n**Recommended preStop sleep: %s** — the longest service-out measured (%s), rounded up to whole seconds, plus a %s margin. Play this cluster on the lab with `lab: {profile: %s}` in a plan.\n",
			out.Recommend.PreStopSleep, out.All.Max, out.Recommend.Margin, profileFile)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// via says what the connections went through; profiles written before it was recorded went through the NodePorts.
func via(out plan.MeasuredOut) string {
	if out.Via == "" {
		return "every node's NodePort"
	}
	return out.Via
}
