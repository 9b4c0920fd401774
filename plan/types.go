// Package plan reads rollout-lab plans: YAML files that describe the app, the load, the rollout and the cases to
// compare. Decoding is strict, defaults fill what a plan leaves out, and Validate reports every problem at once with
// its file, line, column and field path.
package plan

import (
	"fmt"
	"strconv"

	"k8s.io/apimachinery/pkg/api/resource"
	"strings"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("8s", "1m30s").
type Duration time.Duration

// D is the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Seconds is the value in seconds.
func (d Duration) Seconds() float64 { return time.Duration(d).Seconds() }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalYAML writes the duration as it would be written in a plan.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// MarshalText writes the duration for JSON output.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads what MarshalText wrote.
func (d *Duration) UnmarshalText(text []byte) error {
	parsed, err := time.ParseDuration(string(text))
	if err != nil {
		return err
	}
	*d = Duration(parsed)
	return nil
}

// MilliCPU is CPU in thousandths of a core, written as Kubernetes writes it ("500m", "1", "1.5"); 0 is unset.
type MilliCPU int64

func (m MilliCPU) String() string {
	return resource.NewMilliQuantity(int64(m), resource.DecimalSI).String()
}

// MarshalYAML writes the CPU as it would be written in a plan.
func (m MilliCPU) MarshalYAML() (any, error) { return m.String(), nil }

// MarshalText writes the CPU for JSON as in a plan.
func (m MilliCPU) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalJSON reads what MarshalText wrote, and the bare milli-CPU numbers of results written before CPU was
// written as in a plan.
func (m *MilliCPU) UnmarshalJSON(data []byte) error {
	if n, err := strconv.ParseInt(string(data), 10, 64); err == nil {
		*m = MilliCPU(n)
		return nil
	}
	text, err := strconv.Unquote(string(data))
	if err != nil {
		return fmt.Errorf("CPU: want a string such as \"500m\", got %s", data)
	}
	q, err := resource.ParseQuantity(text)
	if err != nil {
		return err
	}
	*m = MilliCPU(q.MilliValue())
	return nil
}

// Quantity is a Kubernetes quantity such as 256Mi, checked when the plan is read.
type Quantity string

// IntOrPercent is a count or a percentage such as "25%", as Kubernetes' rolling update fields take.
type IntOrPercent string

// Helm is the value as the chart wants it: an integer when it is one, else the percentage string.
func (v IntOrPercent) Helm() any {
	if i, err := strconv.Atoi(string(v)); err == nil {
		return i
	}
	return string(v)
}

func (v IntOrPercent) valid() bool {
	s := strings.TrimSuffix(string(v), "%")
	i, err := strconv.Atoi(s)
	return err == nil && i >= 0 && (s != string(v) || !strings.HasPrefix(s, "+"))
}

func (v IntOrPercent) isZero() bool { return strings.TrimSuffix(string(v), "%") == "0" }

// Spec is a plan file as written: shared settings, the cases that override them, and how to run and report.
type Spec struct {
	Name        string     `yaml:"name" json:"name"`
	Description string     `yaml:"description,omitempty" json:"description,omitempty"`
	Target      Target     `yaml:"target" json:"target"`
	Lab         Lab        `yaml:"lab" json:"lab"`
	Repeats     int        `yaml:"repeats" json:"repeats"`
	Report      Report     `yaml:"report" json:"report"`
	Prometheus  Prometheus `yaml:"prometheus" json:"prometheus"`
	Settings    `yaml:",inline"`
	Cases       []CaseSpec `yaml:"cases,omitempty" json:"cases,omitempty"`
	Matrix      *Matrix    `yaml:"matrix,omitempty" json:"matrix,omitempty"`
}

// Settings are what every case has and may override.
type Settings struct {
	App     App     `yaml:"app" json:"app"`
	Load    Load    `yaml:"load" json:"load"`
	Rollout Rollout `yaml:"rollout" json:"rollout"`
	Expect  Expect  `yaml:"expect" json:"expect"`
}

// Prometheus is an external Prometheus for the analysis (what --prometheus-url gives); empty: the embedded one.
type Prometheus struct {
	// URL must scrape the runner's metrics address (runner apply --metrics-listen).
	URL string `yaml:"url,omitempty" json:"url,omitempty"`
	// TokenFile holds a bearer token for URL.
	TokenFile string `yaml:"tokenFile,omitempty" json:"tokenFile,omitempty"`
}

// Target says where the experiment runs.
type Target struct {
	// Kind is lab (the embedded Kubernetes) or kubernetes (a cluster from a kubeconfig).
	Kind string `yaml:"kind" json:"kind"`
	// Context is the kubeconfig context; required with kind kubernetes, so the current context is never used by accident.
	Context string `yaml:"context,omitempty" json:"context,omitempty"`
	// Kubeconfig is the kubeconfig file for kind kubernetes; empty means KUBECONFIG or ~/.kube/config, as kubectl.
	Kubeconfig string `yaml:"kubeconfig,omitempty" json:"kubeconfig,omitempty"`
	// Namespace holds the release; default the plan's name.
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"`
}

// Lab configures the embedded lab (target kind lab).
type Lab struct {
	// Nodes is how many Nodes the lab's node agent runs.
	Nodes int `yaml:"nodes" json:"nodes"`
	// KubeProxy configures every node's kube-proxy (the real one), in KubeProxyConfiguration's terms.
	KubeProxy KubeProxy `yaml:"kubeProxy" json:"kubeProxy"`
	// Profile is a cluster profile (runner calibrate -o FILE, or inline) the lab plays: its kube-proxy settings
	// and its size as a background; a plan that names one sets neither kubeProxy nor background itself.
	Profile *Profile `yaml:"profile,omitempty" json:"profile,omitempty"`
	// Background is the rest of a cluster: Services and endpoints every node's kube-proxy programs besides the app's.
	Background Background `yaml:"background" json:"background"`
	// ServiceOut was the uniform service-out model that the real kube-proxy replaced: a plan that still sets it is
	// told what to write instead.
	ServiceOut Retired `yaml:"serviceOut" json:"-"`
	// Images maps an image (or its repository) to the local command that plays it.
	Images map[string][]string `yaml:"images,omitempty" json:"images,omitempty"`
	// LoadBalancer is what stands in front of a Service of type LoadBalancer, as a cloud's balancer does.
	LoadBalancer LoadBalancer `yaml:"loadBalancer" json:"loadBalancer"`
	// NodeCPU is each node's CPU capacity, enforced as its cgroup's CFS quota; unset: the machine's CPUs less
	// ReservedCPU, shared among the nodes.
	NodeCPU MilliCPU `yaml:"nodeCPU" json:"nodeCPU"`
	// ReservedCPU is what the nodes leave to the runner and the control plane when NodeCPU is unset; unset: a
	// quarter of the machine, at least 500m.
	ReservedCPU MilliCPU `yaml:"reservedCPU" json:"reservedCPU"`
}

// LoadBalancer is the lab's cloud load balancer: mode tcp (one backend connection per client connection, the
// reference cloud's default) or http (a reverse proxy with pooled keep-alive backends, 502 on a backend failure),
// and how long pooled backend connections may stay idle (http).
type LoadBalancer struct {
	Mode        string   `yaml:"mode" json:"mode"`
	IdleTimeout Duration `yaml:"idleTimeout" json:"idleTimeout"`
}

// KubeProxy is what a cluster's KubeProxyConfiguration says of the rules' sync (kube-proxy v1.37 defaulting,
// pkg/proxy/apis/config/v1alpha1/defaults.go: minSyncPeriod 1s, syncPeriod 30s; mode iptables when unset, the
// lab's default is nftables, GA since 1.33).
type KubeProxy struct {
	// Mode is nftables or iptables.
	Mode string `yaml:"mode" json:"mode"`
	// MinSyncPeriod is nftables.minSyncPeriod / iptables.minSyncPeriod (--iptables-min-sync-period): the least time
	// between two rule syncs; changes in between wait for the next one.
	MinSyncPeriod Duration `yaml:"minSyncPeriod" json:"minSyncPeriod"`
	// SyncPeriod is the full resync interval (nftables.syncPeriod / iptables.syncPeriod, --iptables-sync-period).
	SyncPeriod Duration `yaml:"syncPeriod" json:"syncPeriod"`
}

// Retired is a field that no longer exists: decoding it is an error that names its replacement (retiredFields).
type Retired struct{}

// App is the cowweb Deployment: what the chart is given.
type App struct {
	Replicas int   `yaml:"replicas" json:"replicas"`
	Image    Image `yaml:"image" json:"image"`
	// Port is the container port the app listens on.
	Port int `yaml:"port" json:"port"`
	// Slow turns the CPU knob on; Load is its size (load×load pseudo-random calls per request).
	Slow bool `yaml:"slow" json:"slow"`
	Load int  `yaml:"load" json:"load"`
	// Delay is waited in every request without CPU, as a backend call would: long requests without load on the node.
	Delay Duration `yaml:"delay" json:"delay"`
	// Shutdown is the app's reaction to SIGTERM: graceful, immediate or drain.
	Shutdown        string   `yaml:"shutdown" json:"shutdown"`
	DrainDelay      Duration `yaml:"drainDelay" json:"drainDelay"`
	ShutdownTimeout Duration `yaml:"shutdownTimeout" json:"shutdownTimeout"`
	PreStop         PreStop  `yaml:"preStop" json:"preStop"`
	// TerminationGracePeriod is counted from the deletion request, preStop included.
	TerminationGracePeriod Duration `yaml:"terminationGracePeriod" json:"terminationGracePeriod"`
	Probes                 Probes   `yaml:"probes" json:"probes"`
	Strategy               Strategy `yaml:"strategy" json:"strategy"`
	MinReady               Duration `yaml:"minReady" json:"minReady"`
	// Resources are the container's requests and limits (the chart's resources); unset: none, a BestEffort Pod.
	Resources Resources `yaml:"resources" json:"resources"`
	// Values are raw Helm values laid over the ones generated from the fields above.
	Values map[string]any `yaml:"values,omitempty" json:"values,omitempty"`
}

// Resources are a container's CPU and memory requests and limits. The lab enforces CPU (cgroups, as the kubelet);
// memory is passed to the chart for clusters.
type Resources struct {
	Requests ResourceList `yaml:"requests" json:"requests"`
	Limits   ResourceList `yaml:"limits" json:"limits"`
}

// ResourceList is CPU and memory.
type ResourceList struct {
	CPU    MilliCPU `yaml:"cpu,omitempty" json:"cpu,omitempty"`
	Memory Quantity `yaml:"memory,omitempty" json:"memory,omitempty"`
}

// Helm is the list as the chart's resources want it; nil when empty.
func (l ResourceList) Helm() map[string]any {
	m := map[string]any{}
	if l.CPU > 0 {
		m["cpu"] = l.CPU.String()
	}
	if l.Memory != "" {
		m["memory"] = string(l.Memory)
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

// Image overrides the chart's image; empty fields keep the chart's default (the upstream cowweb-go image).
type Image struct {
	Repository string   `yaml:"repository,omitempty" json:"repository,omitempty"`
	Tag        string   `yaml:"tag,omitempty" json:"tag,omitempty"`
	PullPolicy string   `yaml:"pullPolicy,omitempty" json:"pullPolicy,omitempty"`
	Command    []string `yaml:"command,omitempty" json:"command,omitempty"`
}

// Shutdown modes of cowweb (app.shutdown): what it does on SIGTERM.
const (
	ShutdownGraceful  = "graceful"  // stop accepting, finish what is in flight, exit 0
	ShutdownImmediate = "immediate" // exit at once
	ShutdownDrain     = "drain"     // keep accepting for drainDelay, then graceful
)

// PreStop actions (app.preStop.action).
const (
	PreStopExec    = "exec"    // sh -c "sleep N" in the container
	PreStopSleep   = "sleep"   // the kubelet's own sleep action
	PreStopHTTPGet = "httpGet" // a GET to the app
	PreStopNone    = "none"    // no hook
)

// Hook says whether the container gets a preStop hook: httpGet always, exec and sleep only with a sleep longer than
// 0, none never. The chart renders the same rule for its own values (a test holds the two together); the
// report and the validation ask this.
func (p PreStop) Hook() bool {
	switch p.Action {
	case PreStopHTTPGet:
		return true
	case PreStopExec, PreStopSleep:
		return p.Sleep > 0
	}
	return false
}

// PreStop is the container's preStop hook.
type PreStop struct {
	// Sleep is how long the hook sleeps; 0 means no hook (unless Action is httpGet).
	Sleep Duration `yaml:"sleep" json:"sleep"`
	// Action is exec (sh -c "sleep N", as in the reference experiment), sleep (the native action) or httpGet.
	Action string `yaml:"action" json:"action"`
	// Path and Port are for httpGet; port 0 means the app's port.
	Path string `yaml:"path,omitempty" json:"path,omitempty"`
	Port int    `yaml:"port,omitempty" json:"port,omitempty"`
}

// Probes are the container's probes.
type Probes struct {
	Readiness Probe `yaml:"readiness" json:"readiness"`
	Liveness  Probe `yaml:"liveness" json:"liveness"`
	Startup   Probe `yaml:"startup" json:"startup"`
}

// Probe is one probe on the app's port: an HTTP GET of Path, or with an empty Path a TCP connect.
type Probe struct {
	Enabled          bool     `yaml:"enabled" json:"enabled"`
	Path             string   `yaml:"path" json:"path"`
	InitialDelay     Duration `yaml:"initialDelay" json:"initialDelay"`
	Period           Duration `yaml:"period" json:"period"`
	Timeout          Duration `yaml:"timeout" json:"timeout"`
	SuccessThreshold int      `yaml:"successThreshold" json:"successThreshold"`
	FailureThreshold int      `yaml:"failureThreshold" json:"failureThreshold"`
}

// Strategy is the Deployment's rolling update.
type Strategy struct {
	MaxSurge       IntOrPercent `yaml:"maxSurge" json:"maxSurge"`
	MaxUnavailable IntOrPercent `yaml:"maxUnavailable" json:"maxUnavailable"`
}

// Connection models of a load.
const (
	ConnectionPerUser = "per-user"
	ConnectionPooled  = "pooled"
)

// Load is the open-model HTTP load: arrivals follow the schedule whatever the responses do.
type Load struct {
	// Path is requested on the Service, query included.
	Path string `yaml:"path" json:"path"`
	// URL is where a real cluster's Service is reachable from the runner (LoadBalancer, Ingress, NodePort):
	// scheme://host[:port], Path appended. Target kind kubernetes only: the lab routes load through its dataplane.
	URL string `yaml:"url,omitempty" json:"url,omitempty"`
	// InCluster, with Pods > 0, sends the load from a Job of worker Pods in the cluster instead of the runner's process.
	InCluster InCluster `yaml:"inCluster" json:"inCluster"`
	// Method is GET or POST; Body is POST's body. Go's client, like browsers, retries an idempotent request cut on a
	// reused keep-alive connection by itself, so cuts of GETs on keep-alive connections show as latency; a POST's show.
	Method  string   `yaml:"method" json:"method"`
	Body    string   `yaml:"body,omitempty" json:"body,omitempty"`
	Timeout Duration `yaml:"timeout" json:"timeout"`
	// Connection is how requests use connections: per-user (each arrival is a new virtual user with a connection of
	// its own, closed after its response and ThinkTime, never reused nor retried — as Gatling without
	// shareConnections, the reference experiment's loader) or pooled (a keep-alive pool shared by all requests, as
	// vegeta, wrk or a service's own client).
	Connection string `yaml:"connection" json:"connection"`
	// ThinkTime is how long a per-user connection stays open after its response (Gatling's pause before the user ends).
	ThinkTime Duration `yaml:"thinkTime" json:"thinkTime"`
	// Connections bounds idle connections per host (pooled); Workers is the initial worker count and MaxWorkers its bound (0: no bound).
	Connections int `yaml:"connections" json:"connections"`
	Workers     int `yaml:"workers" json:"workers"`
	MaxWorkers  int `yaml:"maxWorkers" json:"maxWorkers"`
	// StartRate and Stages give arrival rates as k6's ramping-arrival-rate does: each stage moves linearly from the
	// previous rate to its target over its duration.
	StartRate float64 `yaml:"startRate" json:"startRate"`
	Stages    []Stage `yaml:"stages,omitempty" json:"stages,omitempty"`
	// Rate and Duration give a constant rate instead of stages.
	Rate     float64  `yaml:"rate,omitempty" json:"rate,omitempty"`
	Duration Duration `yaml:"duration,omitempty" json:"duration,omitempty"`
}

// InCluster is load sent from inside a cluster: a Job of Pods each running `runner worker` at rate/Pods, their
// metrics scraped by Prometheus (the embedded one when it can reach Pod addresses, else a cluster's).
type InCluster struct {
	Pods int `yaml:"pods" json:"pods"`
	// Image is the runner's image; empty: ghcr.io/rollout-lab/runner tagged with the runner's version.
	Image string `yaml:"image,omitempty" json:"image,omitempty"`
}

// Stage is one linear segment of the arrival rate.
type Stage struct {
	Duration Duration `yaml:"duration" json:"duration"`
	Target   float64  `yaml:"target" json:"target"`
}

// Rollout is what happens to the Deployment during the load.
type Rollout struct {
	// Restart does what `kubectl rollout restart` does.
	Restart bool `yaml:"restart" json:"restart"`
	// At is the offset from the load's start; default the middle of the load.
	At *Duration `yaml:"at,omitempty" json:"at,omitempty"`
	// Timeout bounds the wait for the rollout to complete.
	Timeout Duration `yaml:"timeout" json:"timeout"`
}

// Expect holds conditions checked on each case's result; unset ones are not checked.
type Expect struct {
	MaxErrors    *int64   `yaml:"maxErrors,omitempty" json:"maxErrors,omitempty"`
	MaxErrorRate *float64 `yaml:"maxErrorRate,omitempty" json:"maxErrorRate,omitempty"`
}

// Report says how results are written.
type Report struct {
	// Lang is the language of the Markdown tables: ja or en.
	Lang string `yaml:"lang" json:"lang"`
}

// CaseSpec is a named case: its overrides of the plan's settings.
type CaseSpec struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	Settings    `yaml:",inline"`
}

// Matrix generates cases from lists of values for settings fields.
type Matrix struct {
	// Name is the case name template: {field.path} is replaced by the case's value, e.g. "slp{app.preStop.sleep}".
	Name string `yaml:"name,omitempty" json:"name,omitempty"`
	// Params maps a settings field path (app.preStop.sleep) to its values; cases are their cross product.
	Params map[string]any `yaml:"params" json:"params"`
}
