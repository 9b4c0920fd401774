package plan

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"gopkg.in/yaml.v3"
)

// ProfileKind is the kind a cluster profile file declares.
const ProfileKind = "ClusterProfile"

// Profile is what `runner calibrate` measured of a cluster: how long each node kept sending new connections to a
// deleted Pod, the kube-proxy settings it found and the cluster's size. A plan's lab plays it (lab.profile): the
// nodes' kube-proxy as found, and as many Services and endpoints as the cluster has, so that every sync costs what
// it costs there.
type Profile struct {
	Kind string `yaml:"kind" json:"kind"`
	// Name is the cluster's (the kubeconfig context calibrate was given).
	Name       string    `yaml:"name" json:"name"`
	MeasuredAt time.Time `yaml:"measuredAt" json:"measuredAt"`
	// MeasuredFrom is the machine calibrate ran on: its connections crossed the same network as a load's would.
	MeasuredFrom Machine        `yaml:"measuredFrom" json:"measuredFrom"`
	Cluster      ClusterSize    `yaml:"cluster" json:"cluster"`
	KubeProxy    FoundKubeProxy `yaml:"kubeProxy" json:"kubeProxy"`
	ServiceOut   MeasuredOut    `yaml:"serviceOut" json:"serviceOut"`
	// Source is where the profile was read from: a file, or the plan that holds it inline. Not in the file.
	Source string `yaml:"-" json:"source,omitempty"`
}

// Machine names the computer a measurement was taken from.
type Machine struct {
	Host   string `yaml:"host" json:"host"`
	CPUs   int    `yaml:"cpus" json:"cpus"`
	Kernel string `yaml:"kernel,omitempty" json:"kernel,omitempty"`
}

// ClusterSize is what every node's kube-proxy programs: Services and their ready endpoints, counted when calibrate
// started (its probes left out).
type ClusterSize struct {
	Version   string `yaml:"version,omitempty" json:"version,omitempty"`
	Nodes     int    `yaml:"nodes" json:"nodes"`
	Services  int    `yaml:"services" json:"services"`
	Endpoints int    `yaml:"endpoints" json:"endpoints"`
}

// FoundKubeProxy is the cluster's kube-proxy configuration and where it was read; a field not found is empty.
type FoundKubeProxy struct {
	Mode          string   `yaml:"mode" json:"mode"`
	MinSyncPeriod Duration `yaml:"minSyncPeriod" json:"minSyncPeriod"`
	SyncPeriod    Duration `yaml:"syncPeriod" json:"syncPeriod"`
	// Source says where: "ConfigMap kube-system/kube-proxy", "kube-proxy's defaults (no ConfigMap)", …
	Source string `yaml:"source" json:"source"`
	// Programming is kube-proxy's own kubeproxy_network_programming_duration_seconds over the calibration, when a
	// Prometheus that scrapes it was given.
	Programming *Programming `yaml:"programming,omitempty" json:"programming,omitempty"`
}

// Programming is kube-proxy's histogram of network programming latency read over the calibration (Prometheus
// gives quantiles estimated within buckets, so only the median and p99 are kept).
type Programming struct {
	Samples int      `yaml:"samples" json:"samples"`
	P50     Duration `yaml:"p50" json:"p50"`
	P99     Duration `yaml:"p99" json:"p99"`
}

// MeasuredOut is service-out as calibrate measured it: per node, from a Pod's deletion to the last new connection
// that node's NodePort still delivered to it.
type MeasuredOut struct {
	// Via is what the new connections went through: every node's NodePort, or a load URL (then one entry in
	// Nodes, named by the URL: the nodes behind it are not told apart).
	Via       string      `yaml:"via,omitempty" json:"via,omitempty"`
	Deletions int         `yaml:"deletions" json:"deletions"`
	All       Quantiles   `yaml:"all" json:"all"`
	Nodes     []NodeOut   `yaml:"nodes" json:"nodes"`
	Recommend Recommended `yaml:"recommended" json:"recommended"`
}

// NodeOut is one node's measured service-out.
type NodeOut struct {
	Node      string `yaml:"node" json:"node"`
	Quantiles `yaml:",inline" json:",inline"`
}

// Quantiles summarise a distribution of durations.
type Quantiles struct {
	Samples int      `yaml:"samples" json:"samples"`
	P50     Duration `yaml:"p50" json:"p50"`
	P90     Duration `yaml:"p90" json:"p90"`
	P99     Duration `yaml:"p99" json:"p99"`
	Max     Duration `yaml:"max" json:"max"`
}

// Recommended is the preStop sleep the measurement asks for: the longest service-out seen, rounded up to whole
// seconds, plus a margin.
type Recommended struct {
	PreStopSleep Duration `yaml:"preStopSleep" json:"preStopSleep"`
	Margin       Duration `yaml:"margin" json:"margin"`
}

// Recommend is the preStop sleep for a longest service-out: it rounded up to a whole second, plus margin (whole
// seconds: the preStop sleep is given in seconds).
func Recommend(longest, margin time.Duration) Recommended {
	secs := math.Ceil(longest.Seconds()) + math.Ceil(margin.Seconds())
	return Recommended{PreStopSleep: Duration(time.Duration(secs) * time.Second), Margin: Duration(margin)}
}

// Background is what the rest of a cluster asks of every node's kube-proxy: Services with endpoints that no load
// goes to, but whose rules every full sync rewrites (and, in iptables mode, every partial one restores around).
type Background struct {
	Services            int `yaml:"services" json:"services"`
	EndpointsPerService int `yaml:"endpointsPerService" json:"endpointsPerService"`
}

// Limits of a background: the lab's Service range (a /16) and one EndpointSlice per Service.
const (
	MaxBackgroundServices  = 20_000
	MaxEndpointsPerService = 100
)

// LabServices are the Services a lab has before a plan installs anything (default/kubernetes): a profile's count
// includes a cluster's own, so the background is the rest.
const LabServices = 1

// Background is the background a lab needs to program what the profiled cluster does: its Services less those the
// lab already has, each with the cluster's mean number of endpoints (rounded up).
func (p *Profile) Background() Background {
	services := max(p.Cluster.Services-LabServices, 0)
	b := Background{Services: services, EndpointsPerService: 1}
	if p.Cluster.Services > 0 {
		b.EndpointsPerService = max(1, int(math.Ceil(float64(p.Cluster.Endpoints)/float64(p.Cluster.Services))))
	}
	b.EndpointsPerService = min(b.EndpointsPerService, MaxEndpointsPerService)
	return b
}

// Describe says in one line what the profile is and what it measured.
func (p *Profile) Describe() string {
	return fmt.Sprintf("cluster profile %q (%s, measured %s from %s): %d nodes, %d Services, %d endpoints; %s mode, minSyncPeriod %s, syncPeriod %s (%s); measured service-out p50 %s, p99 %s, max %s over %d deletions",
		p.Name, p.Source, p.MeasuredAt.UTC().Format(time.RFC3339), p.MeasuredFrom.Host, p.Cluster.Nodes, p.Cluster.Services, p.Cluster.Endpoints,
		p.KubeProxy.Mode, p.KubeProxy.MinSyncPeriod, p.KubeProxy.SyncPeriod, p.KubeProxy.Source,
		p.ServiceOut.All.P50, p.ServiceOut.All.P99, p.ServiceOut.All.Max, p.ServiceOut.Deletions)
}

// LoadProfile reads a cluster profile file strictly: unknown fields and wrong types are errors with their line.
func LoadProfile(path string) (*Profile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	d := &decoder{file: path, paths: map[*yaml.Node]string{}}
	p := d.profileFile(nil, path, data)
	if len(d.errs) > 0 {
		return nil, d.errs.sorted()
	}
	return p, nil
}

// WriteProfile writes a profile as calibrate does, 0644 (it holds no credentials).
func WriteProfile(path string, p *Profile) error {
	p.Kind = ProfileKind
	data, err := yaml.Marshal(p)
	if err != nil {
		return err
	}
	header := "# A cluster profile written by `runner calibrate`: a plan's lab plays it with lab: {profile: " + filepath.Base(path) + "}.\n"
	return os.WriteFile(path, append([]byte(header), data...), 0o644)
}

// profileType is decoded specially: a file name (relative to the plan) or the profile inline.
var profileType = reflect.TypeFor[*Profile]()

// decodeProfile reads lab.profile: a string names a profile file, relative to the plan's directory; a mapping is a
// profile written inline. Errors in a file name that file and its line.
func (d *decoder) decodeProfile(n *yaml.Node, v reflect.Value, path string, loc located) {
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag == "!!str":
		file := n.Value
		if !filepath.IsAbs(file) {
			file = filepath.Join(filepath.Dir(d.file), file)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			d.errorAt(n, path, "cannot read the profile: %v", err)
			return
		}
		sub := &decoder{file: file, paths: map[*yaml.Node]string{}, work: d.work}
		p := sub.profileFile(n, file, data)
		d.errs = append(d.errs, sub.errs...)
		if p != nil {
			v.Set(reflect.ValueOf(p))
		}
	case n.Kind == yaml.MappingNode:
		p := &Profile{}
		d.decodeStruct(n, reflect.ValueOf(p).Elem(), path, loc)
		p.Source = "inline in " + d.file
		d.validateProfile(p, n, path)
		v.Set(reflect.ValueOf(p))
	default:
		d.errorAt(n, path, "want a profile file written by runner calibrate, or the profile inline, got %s", describe(n))
	}
}

// profileFile decodes a profile file's text; from is the plan's node naming it (nil when read alone).
func (d *decoder) profileFile(from *yaml.Node, file string, data []byte) *Profile {
	root, err := parseDocument(file, data)
	if err != nil {
		if list, ok := err.(ErrorList); ok {
			d.errs = append(d.errs, list...)
		} else {
			d.errorAt(from, "", "%v", err)
		}
		return nil
	}
	d.recordPaths(root, "")
	p := &Profile{}
	d.decodeStruct(root, reflect.ValueOf(p).Elem(), "", nil)
	p.Source = file
	d.validateProfile(p, root, "")
	return p
}

// validateProfile checks what a lab needs of a profile: a kind it knows, a mode it runs, sizes it can hold.
func (d *decoder) validateProfile(p *Profile, n *yaml.Node, path string) {
	// at is the node of a field path (for its line), or the nearest mapping above it that the file has; errors
	// name the field either way.
	at := func(fields ...string) *yaml.Node {
		node := n
		for _, f := range fields {
			_, v := mappingValue(node, f)
			if v == nil {
				return node
			}
			node = v
		}
		return node
	}
	fail := func(node *yaml.Node, field, format string, args ...any) {
		e := Error{File: d.file, Field: join(path, field), Message: fmt.Sprintf(format, args...)}
		if node != nil {
			e.Line, e.Column = node.Line, node.Column
		}
		d.errs = append(d.errs, e)
	}
	if p.Kind != ProfileKind {
		fail(at("kind"), "kind", "want %s (a file written by runner calibrate), got %q", ProfileKind, p.Kind)
	}
	switch p.KubeProxy.Mode {
	case "nftables", "iptables":
	case "":
		fail(at("kubeProxy", "mode"), "kubeProxy.mode", "the profile names no kube-proxy mode; the lab plays nftables or iptables")
	default:
		fail(at("kubeProxy", "mode"), "kubeProxy.mode", "the lab plays kube-proxy's nftables or iptables mode, not %q", p.KubeProxy.Mode)
	}
	if p.KubeProxy.MinSyncPeriod < 0 || p.KubeProxy.MinSyncPeriod.D() > MaxMinSyncPeriod {
		fail(at("kubeProxy", "minSyncPeriod"), "kubeProxy.minSyncPeriod", "must be between 0 and %s, got %s", MaxMinSyncPeriod, p.KubeProxy.MinSyncPeriod)
	}
	if p.KubeProxy.SyncPeriod <= 0 {
		fail(at("kubeProxy", "syncPeriod"), "kubeProxy.syncPeriod", "must be longer than 0, got %s", p.KubeProxy.SyncPeriod)
	}
	if p.Cluster.Services < 0 || p.Cluster.Services-LabServices > MaxBackgroundServices {
		fail(at("cluster", "services"), "cluster.services", "must be between 0 and %d, got %d", MaxBackgroundServices+LabServices, p.Cluster.Services)
	}
	if p.Cluster.Endpoints < 0 {
		fail(at("cluster", "endpoints"), "cluster.endpoints", "must not be negative, got %d", p.Cluster.Endpoints)
	}
}
