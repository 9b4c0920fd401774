package report

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/plan"
)

// Every lab report names the cluster it played; one that played a profile states what that cluster measured and
// the sleep it asks for.
func TestReportNamesTheClusterItPlayed(t *testing.T) {
	kp := plan.KubeProxy{Mode: "iptables", MinSyncPeriod: plan.Duration(10 * time.Second), SyncPeriod: plan.Duration(30 * time.Second)}
	prof := &plan.Profile{Name: "prod", Source: "profiles/prod.yaml", MeasuredAt: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC), MeasuredFrom: plan.Machine{Host: "laptop"},
		KubeProxy: plan.FoundKubeProxy{Mode: "iptables", Source: "ConfigMap kube-system/kube-proxy"},
		ServiceOut: plan.MeasuredOut{Deletions: 4, All: plan.Quantiles{Samples: 12, P50: plan.Duration(6 * time.Second), P90: plan.Duration(9 * time.Second),
			P99: plan.Duration(10500 * time.Millisecond), Max: plan.Duration(10600 * time.Millisecond)}, Recommend: plan.Recommend(10600*time.Millisecond, 2*time.Second)}}
	for _, c := range []struct {
		cluster *analysis.PlayedCluster
		lang    string
		want    []string
	}{
		{&analysis.PlayedCluster{Profile: prof, KubeProxy: kp, Background: plan.Background{Services: 2000, EndpointsPerService: 3}}, "en",
			[]string{`Cluster played: profile "prod" (profiles/prod.yaml, measured 2026-12-06 12:00 UTC from laptop)`, "iptables mode, minSyncPeriod 10s",
				"background 2000 Services × 3 endpoints", "p50 6s, p90 9s, p99 10.5s, max 10.6s (4 Pod deletions, 12 observations) → recommended preStop sleep 13s"}},
		{&analysis.PlayedCluster{Profile: prof, KubeProxy: kp, Background: plan.Background{Services: 2000, EndpointsPerService: 3}}, "ja",
			[]string{`ラボが演じたクラスター: プロファイル "prod"`, "背景の Service 2000 個 × エンドポイント 3", "推奨 preStop sleep 13s"}},
		{&analysis.PlayedCluster{KubeProxy: plan.KubeProxy{Mode: "nftables", MinSyncPeriod: plan.Duration(time.Second), SyncPeriod: plan.Duration(30 * time.Second)}, Background: plan.Background{EndpointsPerService: 1}}, "en",
			[]string{"Cluster played: no cluster profile (the plan's lab section and the lab defaults): kube-proxy nftables mode, minSyncPeriod 1s, syncPeriod 30s, background 0 Services × 1 endpoints."}},
	} {
		rep := fixtureReport()
		rep.Cluster = c.cluster
		var md bytes.Buffer
		if err := WriteMarkdown(&md, rep, c.lang); err != nil {
			t.Fatal(err)
		}
		for _, w := range c.want {
			if !strings.Contains(md.String(), w) {
				t.Errorf("%s report lacks %q:\n%s", c.lang, w, md.String())
			}
		}
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, fixtureReport(), "en"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(md.String(), "Cluster played") {
		t.Errorf("a run on a real cluster names no played cluster:\n%s", md.String())
	}
}
