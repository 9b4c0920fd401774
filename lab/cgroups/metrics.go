package cgroups

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/internal/wellknown"
)

const (
	machineCPUPressureFile           = "/proc/pressure/cpu"
	machineStatFile                  = "/proc/stat"
	machineCPUPressureHelpForCollect = "Time some runnable task waited for a CPU on the machine (PSI \"some\"; the lab's nodes, runner and control plane together)."
)

var (
	containerLabels        = []string{"namespace", "pod", "container", "node"}
	descContainerUsage     = prometheus.NewDesc(wellknown.MetricContainerCPUUsage, "CPU time a lab container used (its cgroup's accounting).", containerLabels, nil)
	descContainerPeriods   = prometheus.NewDesc(wellknown.MetricContainerCFSPeriods, "CFS periods of a lab container with a CPU limit.", containerLabels, nil)
	descContainerThrottled = prometheus.NewDesc(wellknown.MetricContainerCFSThrottled, "CFS periods in which a lab container was throttled at its CPU limit.",
		containerLabels, nil)
	descContainerThrottledTime = prometheus.NewDesc(wellknown.MetricContainerCFSThrottledTime, "Time a lab container was throttled at its CPU limit.",
		containerLabels, nil)
	descNodeUsage     = prometheus.NewDesc(wellknown.MetricNodeCPUUsage, "CPU time the Pods of a lab node used together.", []string{"node"}, nil)
	descNodePeriods   = prometheus.NewDesc(wellknown.MetricNodeCFSPeriods, "CFS periods of a lab node's cgroup (its capacity is its quota).", []string{"node"}, nil)
	descNodeThrottled = prometheus.NewDesc(wellknown.MetricNodeCFSThrottled, "CFS periods in which a lab node's Pods together hit its CPU capacity.", []string{"node"}, nil)
	descNodeCapacity  = prometheus.NewDesc(wellknown.MetricNodeCapacity, "A lab node's capacity.", []string{"node", "resource", "unit"}, nil)
	descMachineWait   = prometheus.NewDesc(wellknown.MetricMachineCPUPressureWaiting, machineCPUPressureHelpForCollect, nil, nil)
	descMachineCPU    = prometheus.NewDesc(wellknown.MetricMachineCPUSeconds, "Seconds the machine's CPUs spent in each mode (/proc/stat, as node_exporter).", []string{"cpu", "mode"}, nil)
)

// Collector reads the lab's cgroups and the machine's CPU time and pressure at each scrape.
type Collector struct {
	source       atomic.Pointer[Cgroups]
	pressureFile string
	statFile     string
}

// NewCollector reads the machine's /proc files, and the cgroups given to SetSource.
func NewCollector() *Collector {
	return &Collector{pressureFile: machineCPUPressureFile, statFile: machineStatFile}
}

// SetSource gives the collector the lab's cgroups (nil: none, e.g. once the lab stops).
func (c *Collector) SetSource(cg *Cgroups) { c.source.Store(cg) }

func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descContainerUsage, descContainerPeriods, descContainerThrottled, descContainerThrottledTime,
		descNodeUsage, descNodePeriods, descNodeThrottled, descNodeCapacity, descMachineWait, descMachineCPU} {
		ch <- d
	}
}

func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if waiting, ok := readCPUPressureWaiting(c.pressureFile); ok {
		ch <- prometheus.MustNewConstMetric(descMachineWait, prometheus.CounterValue, waiting)
	}
	for _, t := range readCPUTimes(c.statFile) {
		ch <- prometheus.MustNewConstMetric(descMachineCPU, prometheus.CounterValue, t.seconds, t.cpu, t.mode)
	}
	cg := c.source.Load()
	if cg == nil {
		return
	}
	cg.mu.Lock()
	nodes := make(map[string]int64, len(cg.nodes))
	for k, v := range cg.nodes {
		nodes[k] = v
	}
	containers := make(map[string]containerCgroup, len(cg.containers))
	for k, v := range cg.containers {
		containers[k] = v
	}
	cg.mu.Unlock()
	for node, milli := range nodes {
		ch <- prometheus.MustNewConstMetric(descNodeCapacity, prometheus.GaugeValue, float64(milli)/1000, node, "cpu", "core")
		s, err := cg.Stat(node)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descNodeUsage, prometheus.CounterValue, s.Usage.Seconds(), node)
		ch <- prometheus.MustNewConstMetric(descNodePeriods, prometheus.CounterValue, float64(s.Periods), node)
		ch <- prometheus.MustNewConstMetric(descNodeThrottled, prometheus.CounterValue, float64(s.ThrottledPeriods), node)
	}
	for rel, ctr := range containers {
		s, err := cg.Stat(rel)
		if err != nil {
			continue // removed since the copy: a container gone between two scrapes
		}
		labels := []string{ctr.namespace, ctr.pod, ctr.container, ctr.node}
		ch <- prometheus.MustNewConstMetric(descContainerUsage, prometheus.CounterValue, s.Usage.Seconds(), labels...)
		ch <- prometheus.MustNewConstMetric(descContainerPeriods, prometheus.CounterValue, float64(s.Periods), labels...)
		ch <- prometheus.MustNewConstMetric(descContainerThrottled, prometheus.CounterValue, float64(s.ThrottledPeriods), labels...)
		ch <- prometheus.MustNewConstMetric(descContainerThrottledTime, prometheus.CounterValue, s.ThrottledDuration.Seconds(), labels...)
	}
}

// readCPUPressureWaiting reads the "some" line's total (µs) of a PSI file, in seconds.
func readCPUPressureWaiting(file string) (float64, bool) {
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, field := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(field, "total="); ok {
				us, err := strconv.ParseUint(v, 10, 64)
				return float64(us) / 1e6, err == nil
			}
		}
	}
	return 0, false
}

type cpuTime struct {
	cpu, mode string
	seconds   float64
}

// userHZ is the unit of /proc/stat's CPU times (USER_HZ, 100 on every Linux architecture Go runs on).
const userHZ = 100

// MachineBusySeconds is the CPU time all of the machine's CPUs spent working (every mode but idle, iowait and
// steal), from /proc/stat.
func MachineBusySeconds() float64 {
	busy := 0.0
	for _, t := range readCPUTimes(machineStatFile) {
		if t.mode != "idle" && t.mode != "iowait" && t.mode != "steal" {
			busy += t.seconds
		}
	}
	return busy
}

// readCPUTimes reads each CPU's time per mode from /proc/stat, with node_exporter's mode names.
func readCPUTimes(file string) []cpuTime {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	modes := []string{"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"}
	var out []cpuTime
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || !strings.HasPrefix(fields[0], "cpu") || fields[0] == "cpu" {
			continue
		}
		for i, mode := range modes {
			if i+1 >= len(fields) {
				break
			}
			ticks, err := strconv.ParseUint(fields[i+1], 10, 64)
			if err != nil {
				continue
			}
			out = append(out, cpuTime{cpu: strings.TrimPrefix(fields[0], "cpu"), mode: mode, seconds: float64(ticks) / userHZ})
		}
	}
	return out
}
