package kubelet

import "testing"

// The kubelet's probes say which release sent them (kube-probe/1.37), as an app's access log shows on a cluster.
func TestProbeUserAgentNamesTheMinorRelease(t *testing.T) {
	for version, want := range map[string]string{"v1.37.2": "kube-probe/1.37", "1.30.0-rc.1": "kube-probe/1.30", "": "kube-probe"} {
		if got := probeUserAgent(version); got != want {
			t.Errorf("probeUserAgent(%q) = %q, want %q", version, got, want)
		}
	}
}
