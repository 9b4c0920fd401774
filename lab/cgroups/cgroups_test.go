package cgroups

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	for milli, want := range map[int64]string{750: "750m", 2000: "2", 1500: "1500m"} {
		if got := FormatMilliCPU(milli); got != want {
			t.Errorf("FormatMilliCPU(%d) = %q, want %q", milli, got, want)
		}
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
	c, err := cgroupHost{mountinfo: filepath.Join(root, "mountinfo"), selfCgroup: filepath.Join(root, "cgroup")}.newCgroups(4242, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Version != 2 || c.cpuDir != filepath.Join(self, "rollout-lab-4242") {
		t.Fatalf("version %d dir %s", c.Version, c.cpuDir)
	}
	if err := c.AddNode("lab-node-1", 750); err != nil {
		t.Fatal(err)
	}
	rel, err := c.AddContainer(Container{Namespace: "ns", Pod: "p", UID: "u1", Node: "lab-node-1", Name: "app",
		Request: 250, Limit: 500, PodRequest: 250, PodLimit: 500})
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
	if err := c.RemovePod("lab-node-1", "u1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(c.cpuDir, "lab-node-1", "podu1")); !os.IsNotExist(err) {
		t.Errorf("pod cgroup left: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
