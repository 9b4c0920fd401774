package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/plan"
)

// closedLoopRun is the short plan both labs run: no preStop sleep, so every new connection a node still sends to
// an old Pod after it stopped listening is lost, as many as that cluster's propagation lets through.
const closedLoopRun = `
app:
  replicas: 2
  slow: false
  delay: 20ms
  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}
  terminationGracePeriod: 30s
load: {rate: 30, duration: 25s, timeout: 5s, connection: per-user}
rollout: {at: 3s, timeout: 90s}
cases:
  - name: gs-slp0
    description: graceful, no preStop
report: {lang: en}
`

// The closed loop: a lab configured as a "cluster" (iptables mode, minSyncPeriod 10 s, a background of other
// Services) is calibrated through its API server as a cluster would be; a second lab that plays only the written
// profile runs the same plan, and its errors fall within the first lab's across-runs interval. The profile comes
// from what calibrate saw, nothing else.
func TestAProfiledLabLosesWhatTheCalibratedClusterLoses(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	clusterPlan := filepath.Join(dir, "cluster.yaml")
	writePlan(t, clusterPlan, "name: closed-loop-cluster\nrepeats: 3\nlab:\n  nodes: 2\n  kubeProxy: {mode: iptables, minSyncPeriod: 10s, syncPeriod: 30s}\n"+
		"  background: {services: 300, endpointsPerService: 2}\n"+closedLoopRun)
	cluster, err := plan.LoadFile(clusterPlan)
	if err != nil {
		t.Fatal(err)
	}

	// Calibrate the "cluster" from outside, with the CLI, through its kubeconfig.
	opts := experiment.LabOptions(cluster)
	opts.Dir, opts.Cowweb = filepath.Join(dir, "cluster-lab"), []string{self, CowwebSubcommand}
	l, err := lab.Up(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	profileFile := filepath.Join(dir, "cluster-profile.yaml")
	code, out, errOut := run(t, "calibrate", "--kubeconfig", l.Kubeconfig, "--context", "rollout-lab", "--yes", "-o", profileFile,
		"--deletions", "3", "--hold", "20s")
	if err := l.Down(); err != nil {
		t.Error(err)
	}
	if code != ExitOK {
		t.Fatalf("calibrate: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("calibration:\n%s", out)
	profile, err := plan.LoadProfile(profileFile)
	if err != nil {
		t.Fatal(err)
	}
	if k := profile.KubeProxy; k.Mode != "iptables" || k.MinSyncPeriod.D() != cluster.Lab.KubeProxy.MinSyncPeriod.D() {
		t.Errorf("calibrate found kube-proxy %+v, the cluster runs %+v", k, cluster.Lab.KubeProxy)
	}
	if got := profile.Background(); got != cluster.Lab.Background {
		t.Errorf("the profile's background %+v, the cluster's %+v", got, cluster.Lab.Background)
	}

	// The same plan on the "cluster", then on a lab that plays the profile.
	playPlan := filepath.Join(dir, "play.yaml")
	writePlan(t, playPlan, "name: closed-loop-play\nrepeats: 2\nlab:\n  nodes: 2\n  profile: cluster-profile.yaml\n"+closedLoopRun)
	results := filepath.Join(dir, "results")
	for _, p := range []string{clusterPlan, playPlan} {
		if code, out, errOut := run(t, "apply", p, "--results", results); code != ExitOK {
			t.Fatalf("apply %s: exit %d\n%s\n%s", p, code, out, errOut)
		}
	}
	clusterReport, err := readReport(onlyDir(t, filepath.Join(results, "closed-loop-cluster", "*")))
	if err != nil {
		t.Fatal(err)
	}
	played, err := readReport(onlyDir(t, filepath.Join(results, "closed-loop-play", "*")))
	if err != nil {
		t.Fatal(err)
	}
	if c := played.Cluster; c == nil || c.Profile == nil || c.Profile.Name != "rollout-lab" || c.KubeProxy.MinSyncPeriod.D() != cluster.Lab.KubeProxy.MinSyncPeriod.D() ||
		c.Background != cluster.Lab.Background {
		t.Fatalf("the second lab played %+v, not the profile", played.Cluster)
	}
	if len(clusterReport.AcrossRuns) != 1 || clusterReport.AcrossRuns[0].ErrorRateCI95 == nil || len(played.AcrossRuns) != 1 {
		t.Fatalf("across runs: %+v and %+v", clusterReport.AcrossRuns, played.AcrossRuns)
	}
	interval := *clusterReport.AcrossRuns[0].ErrorRateCI95
	var clusterErrors, playedErrors []uint64
	for _, r := range clusterReport.Runs {
		clusterErrors = append(clusterErrors, r.Whole.Errors)
	}
	for _, r := range played.Runs {
		playedErrors = append(playedErrors, r.Whole.Errors)
	}
	mean := played.AcrossRuns[0].ErrorRate.Mean
	t.Logf("errors: cluster %v (rate 95%% interval [%.4f, %.4f]), profiled lab %v (mean rate %.4f)", clusterErrors, interval[0], interval[1], playedErrors, mean)
	if clusterReport.AcrossRuns[0].ErrorRate.Mean == 0 {
		t.Fatalf("the cluster lost nothing: no propagation to compare")
	}
	if mean < interval[0] || mean > interval[1] {
		t.Errorf("the profiled lab's mean error rate %.4f is outside the cluster's 95%% interval [%.4f, %.4f]", mean, interval[0], interval[1])
	}
	for _, s := range []string{"Cluster played: profile \"rollout-lab\"", "recommended preStop sleep"} {
		md, err := os.ReadFile(filepath.Join(onlyDir(t, filepath.Join(results, "closed-loop-play", "*")), "report.md"))
		if err != nil || !strings.Contains(string(md), s) {
			t.Errorf("the profiled lab's report does not say %q (%v)", s, err)
		}
	}
}

func writePlan(t *testing.T, file, text string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
