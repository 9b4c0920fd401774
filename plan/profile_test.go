package plan

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func sampleProfile() *Profile {
	return &Profile{Name: "prod", MeasuredAt: time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC),
		MeasuredFrom: Machine{Host: "laptop", CPUs: 8},
		Cluster:      ClusterSize{Version: "v1.18.9", Nodes: 6, Services: 2001, Endpoints: 5003},
		KubeProxy:    FoundKubeProxy{Mode: "iptables", MinSyncPeriod: Duration(10 * time.Second), SyncPeriod: Duration(30 * time.Second), Source: "ConfigMap kube-system/kube-proxy"},
		ServiceOut: MeasuredOut{Deletions: 4, All: Quantiles{Samples: 24, P50: Duration(6 * time.Second), P99: Duration(10500 * time.Millisecond), Max: Duration(10600 * time.Millisecond)},
			Recommend: Recommend(10600*time.Millisecond, 2*time.Second)}}
}

// A profile calibrate writes is what a plan's lab plays: its kube-proxy settings, and the cluster's other Services
// with their mean endpoint count as background.
func TestAPlanPlaysAWrittenProfile(t *testing.T) {
	dir := t.TempDir()
	if err := WriteProfile(filepath.Join(dir, "prod.yaml"), sampleProfile()); err != nil {
		t.Fatal(err)
	}
	planFile := writeFile(t, dir, "p.yaml", "name: p\nlab: {profile: prod.yaml}\n"+okLoad)
	p, err := LoadFile(planFile)
	if err != nil {
		t.Fatal(err)
	}
	want := KubeProxy{Mode: "iptables", MinSyncPeriod: Duration(10 * time.Second), SyncPeriod: Duration(30 * time.Second)}
	if p.Lab.KubeProxy != want {
		t.Errorf("kube-proxy %+v, want %+v", p.Lab.KubeProxy, want)
	}
	// 2001 Services less default/kubernetes; 5003 endpoints over 2001 Services is 2.5, rounded up.
	if got := (Background{Services: 2000, EndpointsPerService: 3}); p.Lab.Background != got {
		t.Errorf("background %+v, want %+v", p.Lab.Background, got)
	}
	if p.Lab.Profile == nil || p.Lab.Profile.Source != filepath.Join(dir, "prod.yaml") || p.Lab.Profile.ServiceOut.Recommend.PreStopSleep.D() != 13*time.Second {
		t.Errorf("profile %+v", p.Lab.Profile)
	}
	if d := p.Lab.Profile.Describe(); !strings.Contains(d, `"prod"`) || !strings.Contains(d, "p99 10.5s") || !strings.Contains(d, "iptables mode, minSyncPeriod 10s") {
		t.Errorf("description %q", d)
	}
}

func TestAnInlineProfileIsPlayedToo(t *testing.T) {
	p, err := Parse("p.yaml", []byte(`name: p
lab:
  profile:
    kind: ClusterProfile
    name: inline
    cluster: {nodes: 3, services: 11, endpoints: 10}
    kubeProxy: {mode: nftables, minSyncPeriod: 2s, syncPeriod: 1m}
`+okLoad))
	if err != nil {
		t.Fatal(err)
	}
	if p.Lab.KubeProxy.MinSyncPeriod.D() != 2*time.Second || p.Lab.Background != (Background{Services: 10, EndpointsPerService: 1}) || p.Lab.Profile.Source != "inline in p.yaml" {
		t.Errorf("lab %+v", p.Lab)
	}
}

// Bad profiles are reported in the profile's own file, with its line and field; a plan cannot mix a profile with
// its own kube-proxy or background.
func TestBadProfilesNameTheirFileAndLine(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "typo.yaml", "kind: ClusterProfile\nname: x\nkubeProxy: {mode: iptables, minSync: 10s, syncPeriod: 30s}\n")
	writeFile(t, dir, "ipvs.yaml", "kind: ClusterProfile\nname: x\nkubeProxy: {mode: ipvs, syncPeriod: 30s}\n")
	writeFile(t, dir, "good.yaml", "kind: ClusterProfile\nname: x\nkubeProxy: {mode: iptables, syncPeriod: 30s}\n")
	for _, c := range []struct{ lab, want string }{
		{"{profile: typo.yaml}", filepath.Join(dir, "typo.yaml") + `:3:29: kubeProxy.minSync: unknown field "minSync"`},
		{"{profile: ipvs.yaml}", filepath.Join(dir, "ipvs.yaml") + `:3:19: kubeProxy.mode: the lab plays kube-proxy's nftables or iptables mode, not "ipvs"`},
		{"{profile: missing.yaml}", "p.yaml:2:16: lab.profile: cannot read the profile"},
		{"{profile: [a]}", "p.yaml:2:16: lab.profile: want a profile file written by runner calibrate"},
		{"{profile: good.yaml, kubeProxy: {minSyncPeriod: 1s}}", "p.yaml:2:38: lab.kubeProxy: the profile (" + filepath.Join(dir, "good.yaml") + ") sets it"},
		{"{profile: good.yaml, background: {services: 5}}", "p.yaml:2:39: lab.background: the profile"},
		{"{background: {services: 30000}}", "p.yaml:2:30: lab.background.services: must be between 0 and 20000"},
		{"{background: {services: 3, endpointsPerService: 0}}", "lab.background.endpointsPerService: must be between 1 and 100"},
	} {
		_, err := LoadFile(writeFile(t, dir, "p.yaml", "name: p\nlab: "+c.lab+"\n"+okLoad))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("lab %s: got %v, want %q", c.lab, err, c.want)
		}
	}
	if _, err := LoadProfile(filepath.Join(dir, "typo.yaml")); err == nil || !strings.Contains(err.Error(), "typo.yaml:3:29") {
		t.Errorf("LoadProfile: %v", err)
	}
}

func TestRecommendRoundsUpAndAddsTheMargin(t *testing.T) {
	for _, c := range []struct{ longest, margin, want time.Duration }{
		{1100 * time.Millisecond, 2 * time.Second, 4 * time.Second},
		{3 * time.Second, 2 * time.Second, 5 * time.Second},
		{0, time.Second, time.Second},
	} {
		if got := Recommend(c.longest, c.margin).PreStopSleep.D(); got != c.want {
			t.Errorf("Recommend(%s, %s) = %s, want %s", c.longest, c.margin, got, c.want)
		}
	}
}
