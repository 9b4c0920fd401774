package lab

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The kubelet's conversions (pkg/kubelet/cm/helpers_linux_test.go has the same pairs).
func TestCPUConversionsAreTheKubelets(t *testing.T) {
	for _, c := range []struct {
		milli  int64
		shares uint64
		quota  int64
	}{{0, 2, 0}, {1, 2, 1000}, {5, 5, 1000}, {100, 102, 10000}, {250, 256, 25000}, {1000, 1024, 100000}, {1500, 1536, 150000}} {
		if got := milliCPUToShares(c.milli); got != c.shares {
			t.Errorf("shares(%dm) = %d, want %d", c.milli, got, c.shares)
		}
		if got := milliCPUToQuota(c.milli); got != c.quota {
			t.Errorf("quota(%dm) = %d, want %d", c.milli, got, c.quota)
		}
	}
	for shares, weight := range map[uint64]uint64{2: 1, 1024: 39, 262144: 10000} {
		if got := sharesToWeight(shares); got != weight {
			t.Errorf("weight(%d shares) = %d, want %d", shares, got, weight)
		}
	}
	if got := FormatMilliCPU(750); got != "750m" {
		t.Errorf("FormatMilliCPU(750) = %q", got)
	}
}

// On a cgroup v2 host the lab writes cpu.weight and cpu.max, and reads usage from cpu.stat (a directory stands in
// for the hierarchy: this machine mounts the cpu controller as v1).
func TestCgroupV2Layout(t *testing.T) {
	root := t.TempDir()
	mount := filepath.Join(root, "sys", "fs", "cgroup")
	self := filepath.Join(mount, "runner.scope")
	if err := os.MkdirAll(self, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(path, data string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(self, "cgroup.controllers"), "cpuset cpu io memory pids\n")
	write(filepath.Join(root, "mountinfo"), "30 23 0:26 / "+mount+" rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
	write(filepath.Join(root, "cgroup"), "0::/runner.scope\n")
	c, err := cgroupHost{mountinfo: filepath.Join(root, "mountinfo"), selfCgroup: filepath.Join(root, "cgroup")}.newCgroups(4242)
	if err != nil {
		t.Fatal(err)
	}
	if c.Version != 2 || c.cpuDir != filepath.Join(self, "rollout-lab-4242") {
		t.Fatalf("version %d dir %s", c.Version, c.cpuDir)
	}
	if err := c.AddNode("lab-node-1", 750); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "lab-node-1",
		Containers: []corev1.Container{{Name: "app", Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")}}}}}}
	rel, err := c.AddContainer(pod, pod.Spec.Containers[0])
	if err != nil {
		t.Fatal(err)
	}
	read := func(rel, file string) string {
		t.Helper()
		data, err := os.ReadFile(filepath.Join(c.cpuDir, rel, file))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(data))
	}
	for _, want := range []struct{ rel, file, value string }{
		{"lab-node-1", "cpu.max", "75000 100000"}, {"lab-node-1", "cpu.weight", "30"},
		{"lab-node-1/podu1", "cpu.max", "50000 100000"}, {"lab-node-1/podu1", "cpu.weight", "10"},
		{rel, "cpu.max", "50000 100000"}, {rel, "cpu.weight", "10"},
		{"", "cgroup.subtree_control", "+cpu"}, {"lab-node-1", "cgroup.subtree_control", "+cpu"},
	} {
		if got := read(want.rel, want.file); got != want.value {
			t.Errorf("%s/%s = %q, want %q", want.rel, want.file, got, want.value)
		}
	}
	write(filepath.Join(c.cpuDir, rel, "cpu.stat"), "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 10\nthrottled_usec 250000\n")
	s, err := c.Stat(rel)
	if err != nil {
		t.Fatal(err)
	}
	if s != (cpuStat{Usage: 1500 * time.Millisecond, Periods: 40, ThrottledPeriods: 10, ThrottledDuration: 250 * time.Millisecond}) {
		t.Errorf("stat %+v", s)
	}
	if err := c.RemovePod(pod); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.cpuDir, "lab-node-1", "podu1")); !os.IsNotExist(err) {
		t.Errorf("pod cgroup left: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// On the real hierarchy: a node never gives its Pods more CPU than its capacity, a container never more than its
// limit, and the accounting shows both with cAdvisor's names.
func TestPodsGetTheirCPULimitsAndNodesTheirCapacity(t *testing.T) {
	requireRoot(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 1, NodeCPU: 500, Cowweb: []string{cowwebBinary}, Metrics: metrics,
		Images: map[string][]string{"lab/sh": {"/bin/sh"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Down()
	if l.Cgroups == nil {
		t.Fatalf("no cgroups: %s", l.CPU.Reason)
	}
	node, err := l.Client.CoreV1().Nodes().Get(ctx, NodeName(1), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cpu := node.Status.Allocatable[corev1.ResourceCPU]; cpu.MilliValue() != 500 {
		t.Errorf("node allocatable cpu %s, want 500m", cpu.String())
	}
	burner := func(name string, limit string) *appsv1.Deployment {
		d := cowwebDeployment(name, 1, 0, "graceful")
		c := &d.Spec.Template.Spec.Containers[0]
		c.Image, c.Command, c.Args, c.ReadinessProbe = "lab/sh", []string{"sh", "-c", "while :; do :; done"}, nil, nil
		if limit != "" {
			c.Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(limit)}
		}
		d.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
		return d
	}
	for _, d := range []*appsv1.Deployment{burner("limited", "100m"), burner("unlimited", "")} {
		if _, err := l.Client.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, app := range []string{"limited", "unlimited"} {
		defer func() {
			if t.Failed() {
				pods, _ := l.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
				for _, p := range pods.Items {
					t.Logf("%s: %+v", p.Name, p.Status)
				}
			}
		}()
		eventually(t, app+" Ready", 30*time.Second, func(ctx context.Context) (bool, error) {
			pods, err := readyPods(ctx, l, "default", app)
			return len(pods) == 1, err
		})
	}
	usage := func() (limited, unlimited, node, throttledLimited, throttledNode float64) {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		value := func(name string, match func(*dto.Metric) bool) float64 {
			for _, f := range families {
				if f.GetName() != name {
					continue
				}
				for _, m := range f.Metric {
					if match(m) {
						return m.GetCounter().GetValue()
					}
				}
			}
			return 0
		}
		podIs := func(prefix string) func(*dto.Metric) bool {
			return func(m *dto.Metric) bool {
				for _, l := range m.Label {
					if l.GetName() == "pod" && strings.HasPrefix(l.GetValue(), prefix+"-") {
						return true
					}
				}
				return false
			}
		}
		any := func(*dto.Metric) bool { return true }
		return value(MetricContainerCPUUsage, podIs("limited")), value(MetricContainerCPUUsage, podIs("unlimited")),
			value(MetricNodeCPUUsage, any), value(MetricContainerCFSThrottled, podIs("limited")), value(MetricNodeCFSThrottled, any)
	}
	l0, u0, n0, tl0, tn0 := usage()
	start := time.Now()
	time.Sleep(4 * time.Second)
	l1, u1, n1, tl1, tn1 := usage()
	elapsed := time.Since(start).Seconds()
	limitedRate, unlimitedRate, nodeRate := (l1-l0)/elapsed, (u1-u0)/elapsed, (n1-n0)/elapsed
	t.Logf("CPU over %.1fs: limited %.3f, unlimited %.3f, node %.3f cores; throttled periods: limited %.0f, node %.0f",
		elapsed, limitedRate, unlimitedRate, nodeRate, tl1-tl0, tn1-tn0)
	if limitedRate > 0.13 || limitedRate < 0.05 {
		t.Errorf("a container limited to 100m used %.3f cores", limitedRate)
	}
	if nodeRate > 0.56 || nodeRate < 0.4 {
		t.Errorf("a node of 500m used %.3f cores", nodeRate)
	}
	if unlimitedRate > 0.46 {
		t.Errorf("the unlimited container used %.3f cores on a 500m node beside a busy 100m one", unlimitedRate)
	}
	if tl1-tl0 < 10 || tn1-tn0 < 10 {
		t.Errorf("throttled periods: limited %.0f, node %.0f; want both throttled", tl1-tl0, tn1-tn0)
	}
}
