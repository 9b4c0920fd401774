package report

import (
	"fmt"

	"github.com/rollout-lab/rollout-lab/analysis"
)

// clusterSentence names the cluster a lab run played: the profile (with what it measured on its cluster and the
// preStop sleep that asks for, beside the lab's own measurement in the service-out sentence), or the plan's lab
// section and the lab's defaults.
func clusterSentence(c *analysis.PlayedCluster, lang string) string {
	kp, bg := c.KubeProxy, c.Background
	if p := c.Profile; p != nil {
		out := p.ServiceOut
		if lang == "ja" {
			return fmt.Sprintf("ラボが演じたクラスター: プロファイル %q (%s、%s に %s から計測)。kube-proxy %s モード、minSyncPeriod %s、syncPeriod %s (%s)、背景の Service %d 個 × エンドポイント %d。そのクラスターで計測したサービスアウト: p50 %s、p90 %s、p99 %s、最大 %s (Pod 削除 %d 回、%d 観測) → 推奨 preStop sleep %s (最大を秒に切り上げ + 余裕 %s)。",
				p.Name, p.Source, p.MeasuredAt.UTC().Format("2006-01-02 15:04 MST"), p.MeasuredFrom.Host, kp.Mode, kp.MinSyncPeriod, kp.SyncPeriod, p.KubeProxy.Source,
				bg.Services, bg.EndpointsPerService, out.All.P50, out.All.P90, out.All.P99, out.All.Max, out.Deletions, out.All.Samples, out.Recommend.PreStopSleep, out.Recommend.Margin)
		}
		return fmt.Sprintf("Cluster played: profile %q (%s, measured %s from %s): kube-proxy %s mode, minSyncPeriod %s, syncPeriod %s (%s), background %d Services × %d endpoints. Service-out measured on that cluster: p50 %s, p90 %s, p99 %s, max %s (%d Pod deletions, %d observations) → recommended preStop sleep %s (the longest, rounded up to seconds, + %s margin).",
			p.Name, p.Source, p.MeasuredAt.UTC().Format("2006-01-02 15:04 MST"), p.MeasuredFrom.Host, kp.Mode, kp.MinSyncPeriod, kp.SyncPeriod, p.KubeProxy.Source,
			bg.Services, bg.EndpointsPerService, out.All.P50, out.All.P90, out.All.P99, out.All.Max, out.Deletions, out.All.Samples, out.Recommend.PreStopSleep, out.Recommend.Margin)
	}
	if lang == "ja" {
		return fmt.Sprintf("ラボが演じたクラスター: クラスタープロファイルなし (計画の lab 設定とラボの既定値): kube-proxy %s モード、minSyncPeriod %s、syncPeriod %s、背景の Service %d 個 × エンドポイント %d。",
			kp.Mode, kp.MinSyncPeriod, kp.SyncPeriod, bg.Services, bg.EndpointsPerService)
	}
	return fmt.Sprintf("Cluster played: no cluster profile (the plan's lab section and the lab defaults): kube-proxy %s mode, minSyncPeriod %s, syncPeriod %s, background %d Services × %d endpoints.",
		kp.Mode, kp.MinSyncPeriod, kp.SyncPeriod, bg.Services, bg.EndpointsPerService)
}
