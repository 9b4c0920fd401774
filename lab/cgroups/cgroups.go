// Package cgroups plays the kubelet's CPU management for the lab's node agent: a cgroup per node capped at its
// capacity, per Pod and per container with shares from requests and CFS quota from limits (cgroup v1 or v2), and a
// Prometheus collector that reads their accounting with cAdvisor's metric names.
package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The lab's CPU model, as the kubelet and a container runtime map it onto cgroups (kubernetes
// pkg/kubelet/cm/helpers_linux.go, runc's shares→weight conversion):
//   - a node is a cgroup whose CFS quota is its CPU capacity: its Pods together never get more than the node has;
//   - a Pod is a cgroup below its node (cpu.shares: the sum of its containers' requests, 2 for a BestEffort Pod;
//     a quota of the sum of limits when every container has one), each container one below its Pod (shares from
//     its request, quota from its limit);
//   - the runner, control plane, balancers and attacker stay outside, in the runner's own cgroup, with the CPU the
//     nodes leave (what the kubelet's reserved CPU is for).
// Both cgroup v1 (cpu and cpuacct controllers) and v2 (the cpu controller) are supported.

// cfsPeriod is the CFS period the kubelet uses (cpu-cfs-quota-period's default).
const cfsPeriod = 100 * time.Millisecond

const (
	minShares = 2
	maxShares = 262144
	// minQuota is the kernel's smallest quota (1 ms), as the kubelet's MinQuotaPeriod.
	minQuota = 1000
)

// milliCPUToShares is the kubelet's MilliCPUToShares.
func milliCPUToShares(milliCPU int64) uint64 {
	if milliCPU == 0 {
		return minShares
	}
	shares := milliCPU * 1024 / 1000
	return uint64(min(max(shares, minShares), maxShares))
}

// milliCPUToQuota is the kubelet's MilliCPUToQuota in µs per period; 0 means no limit.
func milliCPUToQuota(milliCPU int64) int64 {
	if milliCPU == 0 {
		return 0
	}
	return max(milliCPU*cfsPeriod.Microseconds()/1000, minQuota)
}

// sharesToWeight is runc's conversion of cgroup v1 shares to a v2 weight.
func sharesToWeight(shares uint64) uint64 {
	if shares == 0 {
		return 0
	}
	return 1 + ((shares-2)*9999)/262142
}

// cpuStat is a cgroup's CPU accounting.
type cpuStat struct {
	Usage             time.Duration
	Periods           uint64
	ThrottledPeriods  uint64
	ThrottledDuration time.Duration
}

// Cgroups is the lab's part of the host's cgroup hierarchy: rollout-lab-<pid> below the runner's own cgroup.
type Cgroups struct {
	Version int // 1 or 2
	// cpuDir and acctDir are the lab's directories in the v1 cpu and cpuacct hierarchies (the same one in v2, or
	// when v1 mounts cpu,cpuacct together).
	cpuDir, acctDir string
	mu              sync.Mutex
	containers      map[string]containerCgroup // by relative path
	nodes           map[string]int64           // node → milli-CPU capacity
}

type containerCgroup struct {
	namespace, pod, container, node string
}

const cgroupPrefix = "rollout-lab-"

// Cgroup mount points and the process's own cgroup, from /proc (paths swappable for tests).
type cgroupHost struct {
	mountinfo, selfCgroup string
}

var procCgroupHost = cgroupHost{mountinfo: "/proc/self/mountinfo", selfCgroup: "/proc/self/cgroup"}

// New makes the lab's cgroup directory for owner (the lab's process) under the runner's own cgroup, with the cpu
// controller available to it, or says why it cannot. Directories of other labs are removed when stale(pid) says
// their process is gone.
func New(owner int, stale func(pid int) bool) (*Cgroups, error) {
	return procCgroupHost.newCgroups(owner, stale)
}

func (h cgroupHost) newCgroups(owner int, stale func(pid int) bool) (*Cgroups, error) {
	mounts, err := h.mounts()
	if err != nil {
		return nil, err
	}
	self, err := h.ownCgroups()
	if err != nil {
		return nil, err
	}
	name := cgroupPrefix + strconv.Itoa(owner)
	if cpu, ok := mounts.v1["cpu"]; ok {
		acct, ok := mounts.v1["cpuacct"]
		if !ok {
			return nil, fmt.Errorf("cgroup v1: the cpu controller is mounted at %s but cpuacct is not", cpu)
		}
		c := &Cgroups{Version: 1, cpuDir: filepath.Join(cpu, self.v1["cpu"], name), acctDir: filepath.Join(acct, self.v1["cpuacct"], name)}
		removeStale(stale, filepath.Dir(c.cpuDir), filepath.Dir(c.acctDir))
		for _, dir := range []string{c.cpuDir, c.acctDir} {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("cgroup v1: %w", err)
			}
		}
		c.init()
		return c, nil
	}
	if mounts.v2 == "" {
		return nil, errors.New("no cgroup hierarchy with a cpu controller is mounted (cgroup v1 cpu and cpuacct, or v2)")
	}
	parent := filepath.Join(mounts.v2, self.v2)
	if !controllerListed(filepath.Join(parent, "cgroup.controllers"), "cpu") {
		return nil, fmt.Errorf("cgroup v2: the cpu controller is not available in %s", parent)
	}
	// v2 lets a cgroup hand a controller to its children only if it has no processes of its own; the runner's
	// cgroup usually has (the runner), unless it is the root.
	if err := enableController(parent, "cpu"); err != nil {
		return nil, fmt.Errorf("cgroup v2: cannot give the cpu controller to %s's children (run the runner in a cgroup of its own, e.g. systemd-run --scope -p Delegate=yes): %w", parent, err)
	}
	dir := filepath.Join(parent, name)
	removeStale(stale, parent)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cgroup v2: %w", err)
	}
	c := &Cgroups{Version: 2, cpuDir: dir, acctDir: dir}
	c.init()
	return c, enableController(dir, "cpu")
}

// removeStale removes the cgroups of labs whose process is gone.
func removeStale(stale func(pid int) bool, parents ...string) {
	for _, parent := range parents {
		entries, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range entries {
			pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), cgroupPrefix))
			if !e.IsDir() || !strings.HasPrefix(e.Name(), cgroupPrefix) || err != nil || pid == os.Getpid() {
				continue
			}
			if stale != nil && stale(pid) {
				stale := &Cgroups{cpuDir: filepath.Join(parent, e.Name()), acctDir: filepath.Join(parent, e.Name())}
				_ = stale.removeTree("")
			}
		}
	}
}

func (c *Cgroups) init() {
	c.containers = map[string]containerCgroup{}
	c.nodes = map[string]int64{}
}

type cgroupMounts struct {
	v1 map[string]string // controller → mount point
	v2 string
}

func (h cgroupHost) mounts() (cgroupMounts, error) {
	m := cgroupMounts{v1: map[string]string{}}
	f, err := os.Open(h.mountinfo)
	if err != nil {
		return m, err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(scanner.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+3 > len(fields) {
			continue
		}
		mountPoint, fsType := fields[4], fields[sep+1]
		switch fsType {
		case "cgroup2":
			if m.v2 == "" {
				m.v2 = mountPoint
			}
		case "cgroup":
			for _, opt := range strings.Split(fields[sep+3], ",") {
				if opt == "cpu" || opt == "cpuacct" {
					if _, ok := m.v1[opt]; !ok {
						m.v1[opt] = mountPoint
					}
				}
			}
		}
	}
	return m, scanner.Err()
}

type ownCgroups struct {
	v1 map[string]string
	v2 string
}

func (h cgroupHost) ownCgroups() (ownCgroups, error) {
	own := ownCgroups{v1: map[string]string{}}
	data, err := os.ReadFile(h.selfCgroup)
	if err != nil {
		return own, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			own.v2 = parts[2]
			continue
		}
		for _, controller := range strings.Split(parts[1], ",") {
			own.v1[controller] = parts[2]
		}
	}
	return own, nil
}

func controllerListed(file, controller string) bool {
	data, err := os.ReadFile(file)
	return err == nil && slices.Contains(strings.Fields(string(data)), controller)
}

func enableController(dir, controller string) error {
	if controllerListed(filepath.Join(dir, "cgroup.subtree_control"), controller) {
		return nil
	}
	return os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+controller), 0)
}

// limits writes a cgroup's weight and quota (quota 0: no limit).
func (c *Cgroups) limits(rel string, shares uint64, quotaMicros int64) error {
	cpu := filepath.Join(c.cpuDir, rel)
	if err := os.MkdirAll(cpu, 0o755); err != nil {
		return err
	}
	if c.Version == 1 {
		if err := os.MkdirAll(filepath.Join(c.acctDir, rel), 0o755); err != nil {
			return err
		}
		quota := "-1"
		if quotaMicros > 0 {
			quota = strconv.FormatInt(quotaMicros, 10)
		}
		return errors.Join(
			os.WriteFile(filepath.Join(cpu, "cpu.shares"), []byte(strconv.FormatUint(shares, 10)), 0),
			os.WriteFile(filepath.Join(cpu, "cpu.cfs_period_us"), []byte(strconv.FormatInt(cfsPeriod.Microseconds(), 10)), 0),
			os.WriteFile(filepath.Join(cpu, "cpu.cfs_quota_us"), []byte(quota), 0))
	}
	max := "max"
	if quotaMicros > 0 {
		max = strconv.FormatInt(quotaMicros, 10)
	}
	if err := enableController(filepath.Dir(cpu), "cpu"); err != nil {
		return err
	}
	return errors.Join(
		os.WriteFile(filepath.Join(cpu, "cpu.weight"), []byte(strconv.FormatUint(sharesToWeight(shares), 10)), 0),
		os.WriteFile(filepath.Join(cpu, "cpu.max"), []byte(max+" "+strconv.FormatInt(cfsPeriod.Microseconds(), 10)), 0))
}

// AddNode makes a node's cgroup, capped at its capacity.
func (c *Cgroups) AddNode(node string, milliCPU int64) error {
	c.mu.Lock()
	c.nodes[node] = milliCPU
	c.mu.Unlock()
	return c.limits(node, milliCPUToShares(milliCPU), milliCPUToQuota(milliCPU))
}

// Container is what a container's cgroup is made from: where it runs, and the CPU of its Pod and its own, in
// milli-CPU (a limit without a request stands for both, as the API server defaults it; 0: none).
type Container struct {
	Namespace, Pod, UID, Node, Name string
	Request, Limit                  int64
	// PodRequest is the sum of the Pod's containers' requests; PodLimit the sum of their limits when every one has
	// a limit, else 0.
	PodRequest, PodLimit int64
}

func podDir(node, uid string) string { return filepath.Join(node, "pod"+uid) }

// AddContainer makes the cgroups of a container's Pod and of the container; it returns the container's, for Place.
func (c *Cgroups) AddContainer(ctr Container) (string, error) {
	if err := c.limits(podDir(ctr.Node, ctr.UID), milliCPUToShares(ctr.PodRequest), milliCPUToQuota(ctr.PodLimit)); err != nil {
		return "", fmt.Errorf("pod cgroup: %w", err)
	}
	rel := filepath.Join(podDir(ctr.Node, ctr.UID), ctr.Name)
	if err := c.limits(rel, milliCPUToShares(ctr.Request), milliCPUToQuota(ctr.Limit)); err != nil {
		return "", fmt.Errorf("container cgroup: %w", err)
	}
	c.mu.Lock()
	c.containers[rel] = containerCgroup{namespace: ctr.Namespace, pod: ctr.Pod, container: ctr.Name, node: ctr.Node}
	c.mu.Unlock()
	return rel, nil
}

// Place moves a process into a cgroup. Between the process's start and this write it runs in the runner's cgroup:
// a few milliseconds of `ip netns exec` and setpriv (v1 has no way to start a process in a cgroup).
func (c *Cgroups) Place(rel string, pid int) error {
	dirs := []string{c.cpuDir}
	if c.acctDir != c.cpuDir {
		dirs = append(dirs, c.acctDir)
	}
	var errs []error
	for _, dir := range dirs {
		err := os.WriteFile(filepath.Join(dir, rel, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
		if err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemovePod removes a Pod's cgroups once its processes are gone.
func (c *Cgroups) RemovePod(node, uid string) error {
	rel := podDir(node, uid)
	c.mu.Lock()
	for k := range c.containers {
		if strings.HasPrefix(k, rel+string(filepath.Separator)) {
			delete(c.containers, k)
		}
	}
	c.mu.Unlock()
	return c.removeTree(rel)
}

// removeTree removes rel and everything below it, deepest first (a cgroup directory goes only when empty).
func (c *Cgroups) removeTree(rel string) error {
	var errs []error
	roots := []string{c.cpuDir}
	if c.acctDir != c.cpuDir {
		roots = append(roots, c.acctDir)
	}
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(root, rel), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, dir := range dirs {
			if err := removeCgroupDir(dir); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroupDir removes one cgroup; the control files of a cgroupfs vanish with it, a plain directory (tests)
// needs them removed first.
func removeCgroupDir(dir string) error {
	err := os.Remove(dir)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if entries, readErr := os.ReadDir(dir); readErr == nil && !isCgroupfs(dir) {
		for _, e := range entries {
			if !e.IsDir() {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
		return os.Remove(dir)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, err)
}

// Close removes the lab's cgroups.
func (c *Cgroups) Close() error { return c.removeTree("") }

// Stat reads a cgroup's CPU accounting.
func (c *Cgroups) Stat(rel string) (cpuStat, error) {
	var s cpuStat
	values, err := readKeyValues(filepath.Join(c.cpuDir, rel, "cpu.stat"))
	if err != nil {
		return s, err
	}
	s.Periods, s.ThrottledPeriods = values["nr_periods"], values["nr_throttled"]
	if c.Version == 2 {
		s.Usage = time.Duration(values["usage_usec"]) * time.Microsecond
		s.ThrottledDuration = time.Duration(values["throttled_usec"]) * time.Microsecond
		return s, nil
	}
	s.ThrottledDuration = time.Duration(values["throttled_time"])
	usage, err := os.ReadFile(filepath.Join(c.acctDir, rel, "cpuacct.usage"))
	if err != nil {
		return s, err
	}
	ns, err := strconv.ParseUint(strings.TrimSpace(string(usage)), 10, 64)
	s.Usage = time.Duration(ns)
	return s, err
}

func readKeyValues(file string) (map[string]uint64, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	values := map[string]uint64{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), " "); ok {
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64); err == nil {
				values[k] = n
			}
		}
	}
	return values, nil
}

// DefaultNodeCPU shares the machine's CPUs among the nodes after keeping reserved milli-CPU for the runner and the
// control plane; at least 100m per node.
func DefaultNodeCPU(nodes int, reservedMilli int64) int64 {
	available := int64(runtime.NumCPU())*1000 - reservedMilli
	return max(available/int64(max(nodes, 1))/10*10, 100)
}

// DefaultReservedCPU is what the lab keeps for the runner, control plane, balancers and attacker: a quarter of the
// machine, at least 500m.
func DefaultReservedCPU() int64 {
	return max(int64(runtime.NumCPU())*1000/4, 500)
}

// FormatMilliCPU writes milli-CPU as Kubernetes does ("750m", "2").
func FormatMilliCPU(milli int64) string {
	if milli%1000 == 0 {
		return strconv.FormatInt(milli/1000, 10)
	}
	return strconv.FormatInt(milli, 10) + "m"
}

// isCgroupfs tells a cgroup filesystem from a plain directory.
func isCgroupfs(path string) bool {
	var st syscall.Statfs_t
	if syscall.Statfs(path, &st) != nil {
		return false
	}
	const cgroupMagic, cgroup2Magic = 0x27e0eb, 0x63677270
	return st.Type == cgroupMagic || st.Type == cgroup2Magic
}
