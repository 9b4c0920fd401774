package analysis

import (
	"context"
	"fmt"
	"math"
	"strconv"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/rollout-lab/rollout-lab/internal/wellknown"
)

// CPUUse is how busy the CPU was during a run's load: the machine the lab runs on, the lab's nodes (each capped at
// its capacity) and the app's containers (at their limits). Each figure is a fraction of the window; nil: not
// measured (on a cluster the machine and node figures come only when Prometheus scrapes what the lab exports).
type CPUUse struct {
	// MachineBusy is the share of the machine's CPU time that was not idle (node_cpu_seconds_total).
	MachineBusy *float64 `json:"machineBusy,omitempty"`
	// MachineWaiting is the share of the window in which some task waited for a CPU (PSI, "some"); CFS-throttled
	// Pods count as waiting too.
	MachineWaiting *float64 `json:"machineWaiting,omitempty"`
	// NodeThrottled is the largest share of CFS periods in which one node's Pods together hit its capacity.
	NodeThrottled     *float64 `json:"nodeThrottled,omitempty"`
	NodeThrottledName string   `json:"nodeThrottledName,omitempty"`
	// PodThrottled is the share of CFS periods the namespace's containers with a CPU limit were throttled.
	PodThrottled *float64 `json:"podThrottled,omitempty"`
}

// Saturation thresholds. A machine whose CPUs are busy ≥ 90% of the time leaves the runner (attacker, balancers,
// control plane) without headroom: its measurements then describe the machine, not the plan. A node or a Pod
// throttled in ≥ 10% of the CFS periods over the load spent that share of the run with work waiting for the next
// period: requests there queue for CPU, as on a cluster whose nodes are full — physics of the modelled cluster, but
// not the one the plan meant to show, so it is flagged too. 10% is ten times what the lab's nodes show under the
// quick plan (≤ 1%, measured), and below the 20–50% of the reference plans' collapsed runs on 2 CPUs.
const (
	SaturatedMachineBusy = 0.90
	SaturatedThrottled   = 0.10
)

// An app that falls behind its arrivals shows it in its latency whatever held it up — CPU, or a lock such as the
// reference knob's mutex-guarded random source, which collapses the Pods while the machine is only ~38% busy
// (../shared/LAB-NOTES.md): requests queue in the Pods, so the median over the load climbs far above the warm-up's
// (the load before the rollout, at the same rates or lower). Ten times the warm-up's median and at least 100 ms
// more: a rollout alone moves the median by a few percent (0.81–1.05× on the seed's scaled plans), a queue by orders
// of magnitude (30 s against ~20 ms in the collapsed reference run).
const (
	OverloadedMedianFactor   = 10.0
	OverloadedMedianMarginMs = 100.0
)

// Overloaded says whether the app fell behind its arrivals (see OverloadedMedianFactor).
func (r CaseRun) Overloaded() bool {
	w := r.WarmUp
	return w != nil && w.Total > 0 && r.Whole.P50Ms >= OverloadedMedianFactor*w.P50Ms && r.Whole.P50Ms-w.P50Ms >= OverloadedMedianMarginMs
}

// What can make a run's figures describe something other than the plan.
const (
	SaturationOverloaded    = "overloaded"     // the app fell behind its arrivals (Overloaded)
	SaturationLateSending   = "late-sending"   // the attacker's p99 lateness > SaturatedLateness (ms)
	SaturationMachineBusy   = "machine-busy"   // the machine's CPUs busy ≥ SaturatedMachineBusy
	SaturationNodeThrottled = "node-throttled" // a node at its capacity in ≥ SaturatedThrottled of its CFS periods
	SaturationPodsThrottled = "pods-throttled" // the app's containers throttled in ≥ SaturatedThrottled
)

// SaturationCause is one reason a run is flagged: its kind, the measured value against the threshold it passed
// (for overloaded: the medians over the load and the warm-up, in ms), and the node it concerns.
type SaturationCause struct {
	Kind             string
	Value, Threshold float64
	Node             string
}

// SaturationCauses lists why a run's figures describe a starved attacker, a CPU-starved machine, nodes or Pods, or
// an app that fell behind its arrivals, rather than the plan; empty when none did.
func (r CaseRun) SaturationCauses() []SaturationCause {
	var causes []SaturationCause
	if r.Overloaded() {
		causes = append(causes, SaturationCause{Kind: SaturationOverloaded, Value: r.Whole.P50Ms, Threshold: r.WarmUp.P50Ms})
	}
	if r.Lateness != nil && r.Lateness.P99Ms > SaturatedLateness {
		causes = append(causes, SaturationCause{Kind: SaturationLateSending, Value: r.Lateness.P99Ms, Threshold: SaturatedLateness})
	}
	if c := r.CPU; c != nil {
		if c.MachineBusy != nil && *c.MachineBusy >= SaturatedMachineBusy {
			causes = append(causes, SaturationCause{Kind: SaturationMachineBusy, Value: *c.MachineBusy, Threshold: SaturatedMachineBusy})
		}
		if c.NodeThrottled != nil && *c.NodeThrottled >= SaturatedThrottled {
			causes = append(causes, SaturationCause{Kind: SaturationNodeThrottled, Value: *c.NodeThrottled, Threshold: SaturatedThrottled, Node: c.NodeThrottledName})
		}
		if c.PodThrottled != nil && *c.PodThrottled >= SaturatedThrottled {
			causes = append(causes, SaturationCause{Kind: SaturationPodsThrottled, Value: *c.PodThrottled, Threshold: SaturatedThrottled})
		}
	}
	return causes
}

// CPUQueries are the PromQL of CPUUse over a window.
type CPUQueries struct {
	MachineBusy, MachineWaiting, NodeThrottled, PodThrottled string
}

// grown is how much a counter grew over the window, per series, from the last scraped values at the window's
// edges (series born inside the window count from zero; series gone before its end keep their last value).
func grown(series string, w Window) string {
	end := fmt.Sprintf("last_over_time(%s[%s] @ %s)", series, lookback(w), at(w.End))
	start := fmt.Sprintf("last_over_time(%s[%s] @ %s)", series, lookback(w), at(w.Start))
	return fmt.Sprintf("(%s - (%s or %s * 0))", end, start, end)
}

// CPUQueriesFor builds the queries; namespace picks the app's containers.
func CPUQueriesFor(namespace string, w Window) CPUQueries {
	seconds := strconv.FormatFloat(w.End.Sub(w.Start).Seconds(), 'f', -1, 64)
	idle := grown(fmt.Sprintf(`%s{mode=~"idle|iowait"}`, wellknown.MetricMachineCPUSeconds), w)
	all := grown(wellknown.MetricMachineCPUSeconds, w)
	containers := fmt.Sprintf("{namespace=%s}", strconv.Quote(namespace))
	return CPUQueries{
		MachineBusy:    fmt.Sprintf("1 - sum(%s) / sum(%s)", idle, all),
		MachineWaiting: fmt.Sprintf("sum(%s) / %s", grown(wellknown.MetricMachineCPUPressureWaiting, w), seconds),
		NodeThrottled: fmt.Sprintf("topk(1, sum by (node) (%s) / sum by (node) (%s))",
			grown(wellknown.MetricNodeCFSThrottled, w), grown(wellknown.MetricNodeCFSPeriods, w)),
		PodThrottled: fmt.Sprintf("sum(%s) / sum(%s)", grown(wellknown.MetricContainerCFSThrottled+containers, w), grown(wellknown.MetricContainerCFSPeriods+containers, w)),
	}
}

// cpuUse runs the queries; a query without data leaves its figure unset.
func cpuUse(ctx context.Context, api promv1.API, namespace string, w Window) (*CPUUse, error) {
	q := CPUQueriesFor(namespace, w)
	var use CPUUse
	found := false
	for _, f := range []struct {
		query string
		into  **float64
		name  *string
	}{{q.MachineBusy, &use.MachineBusy, nil}, {q.MachineWaiting, &use.MachineWaiting, nil},
		{q.NodeThrottled, &use.NodeThrottled, &use.NodeThrottledName}, {q.PodThrottled, &use.PodThrottled, nil}} {
		vec, err := QueryVector(ctx, api, f.query, w.End)
		if err != nil {
			return nil, err
		}
		if len(vec) == 0 || math.IsNaN(float64(vec[0].Value)) || math.IsInf(float64(vec[0].Value), 0) {
			continue
		}
		v := float64(vec[0].Value)
		*f.into, found = &v, true
		if f.name != nil {
			*f.name = string(vec[0].Metric[model.LabelName("node")])
		}
	}
	if !found {
		return nil, nil
	}
	return &use, nil
}
