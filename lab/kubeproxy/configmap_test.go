package kubeproxy

import (
	"slices"
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
	if _, err := ParseConfiguration([]byte("kind: KubeletConfiguration\n")); err == nil {
		t.Error("a KubeletConfiguration was taken for kube-proxy's")
	}
}
