package analysis

import "github.com/rollout-lab/rollout-lab/plan"

// Report is everything a run's reports are written from.
type Report struct {
	Plan        string    `json:"plan"`
	Description string    `json:"description,omitempty"`
	Partial     bool      `json:"partial"`
	Runs        []CaseRun `json:"runs"`
	// LoadPath says how the load reached the Pods (the target's words: a load balancer, a node's proxy, a URL).
	LoadPath string `json:"loadPath,omitempty"`
	// LoadPathJa says it in Japanese (empty: the report of a Japanese plan falls back to LoadPath).
	LoadPathJa string `json:"loadPathJa,omitempty"`
	// CPUModel says what a lab node is, CPU-wise (empty on a cluster); CPUModelJa in Japanese.
	CPUModel   string `json:"cpuModel,omitempty"`
	CPUModelJa string `json:"cpuModelJa,omitempty"`
	// Cluster is the cluster a lab run played (nil on a real cluster): a profile's, or the plan's lab settings.
	Cluster *PlayedCluster `json:"cluster,omitempty"`
	// ServiceOut is the measured service-out latency over the runs, when Prometheus has it.
	ServiceOut *ServiceOut `json:"serviceOut,omitempty"`
	// AcrossRuns summarizes cases that ran more than once (repeats); Complete fills it.
	AcrossRuns []CaseSummary `json:"acrossRuns,omitempty"`
	// Sweep is the answer of a plan whose cases differ only in the preStop sleep; Complete fills it.
	Sweep *Sweep `json:"sweep,omitempty"`
}

// PlayedCluster is what the lab played of a cluster: the profile (nil: the lab's defaults and the plan's lab
// section), its kube-proxy and the background every node's kube-proxy programmed.
type PlayedCluster struct {
	Profile    *plan.Profile   `json:"profile,omitempty"`
	KubeProxy  plan.KubeProxy  `json:"kubeProxy"`
	Background plan.Background `json:"background"`
}

// Complete computes what the report concludes across its runs — the summary of repeated cases and the sweep's
// answer — once, for every writer to read.
func (r *Report) Complete() {
	r.AcrossRuns = Summarize(r.Runs)
	r.Sweep = SweepOf(*r)
}
