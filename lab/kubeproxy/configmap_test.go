package kubeproxy

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// A kubeadm ConfigMap of Kubernetes 1.18 sets every field, minSyncPeriod 0s included; one written by hand may leave
// fields out, and kube-proxy's defaults then apply, which the result says.
func TestParseConfigurationReadsTheModesPeriods(t *testing.T) {
	for _, c := range []struct {
		name, conf    string
		want          Config
		wantDefaulted []string
	}{
		{"kubeadm 1.18", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: \"\"\niptables:\n  minSyncPeriod: 0s\n  syncPeriod: 30s\n  masqueradeAll: false\nipvs:\n  minSyncPeriod: 0s\n",
			Config{Mode: ModeIPTables, MinSyncPeriod: 0, SyncPeriod: 30 * time.Second}, []string{"mode"}},
		{"GKE-like", "kind: KubeProxyConfiguration\nmode: iptables\niptables: {minSyncPeriod: 10s, syncPeriod: 1m}\n",
			Config{Mode: ModeIPTables, MinSyncPeriod: 10 * time.Second, SyncPeriod: time.Minute}, nil},
		{"nftables, periods left out", "kind: KubeProxyConfiguration\nmode: nftables\niptables: {minSyncPeriod: 10s}\n",
			Config{Mode: ModeNFTables, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second}, []string{"minSyncPeriod", "syncPeriod"}},
	} {
		got, err := ParseConfiguration([]byte(c.conf))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got.Config != c.want || !slices.Equal(got.Defaulted, c.wantDefaulted) {
			t.Errorf("%s: got %+v, want %+v defaulted %v", c.name, got, c.want, c.wantDefaulted)
		}
	}
	// The lab writes 0 as 1 ns (v1.37 defaults a written 0 to 1 s), and that is what its kube-proxies run.
	written, err := Configuration(Config{Mode: ModeIPTables, SyncPeriod: 30 * time.Second}, "10.0.0.0/16", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(written), "minSyncPeriod: 1ns") {
		t.Errorf("a minSyncPeriod of 0 is written as:\n%s", written)
	}
	if got, err := ParseConfiguration(written); err != nil || got.MinSyncPeriod != NoMinSyncPeriod {
		t.Errorf("read back: %+v %v", got, err)
	}
	if _, err := ParseConfiguration([]byte("kind: KubeletConfiguration\n")); err == nil {
		t.Error("a KubeletConfiguration was taken for kube-proxy's")
	}
}

// A written minSyncPeriod of 0 meant no minimum up to kube-proxy 1.18 and 1 s from 1.19 on.
func TestZeroMinSyncPeriodDependsOnTheVersion(t *testing.T) {
	for _, c := range []struct {
		version string
		want    time.Duration
		ok      bool
	}{{"v1.18.9", 0, true}, {"v1.19.0", time.Second, true}, {"v1.29.3-gke.100", time.Second, true}, {"v1.37.2", time.Second, true}, {"unknown", 0, false}} {
		got, ok := ZeroMinSyncPeriod(c.version)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %s %v, want %s %v", c.version, got, ok, c.want, c.ok)
		}
	}
}
