// Package calibrate measures how long a cluster's nodes keep sending new connections to a deleted Pod, and what
// sets that length, and writes it as a cluster profile (plan.Profile) that a plan's lab plays.
//
// The measurement: probe Pods (the cowweb chart, a long preStop sleep so a deleted probe keeps serving) and one
// sentinel Pod, Ready but answering nothing on the probed port. Each probe Pod gets a NodePort Service of its own
// that selects it and the sentinel: while a node's rules hold the probe Pod, about half of the new connections
// through that node's NodePort reach it (kube-proxy picks an endpoint at random per connection); once they let it
// go, every one is refused by the sentinel. (A Service with
// only the terminating Pod would not do: kube-proxy falls back to serving-terminating endpoints when no endpoint is
// ready, pkg/proxy/topology.go, so the node would never let go.) The probe Pods are deleted one at a time while new
// connections (perTick at once) go through every node's NodePort every Interval; a node's service-out is from the
// deletion to the first tick after the last one that reached the deleted Pod, and Refusals in a row (a chance of
// 2^-40 that the Pod was still in the rules) end that node's watch.
package calibrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"helm.sh/helm/v3/pkg/action"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/plan"
)

// Config is what a calibration needs; tests swap the clients.
type Config struct {
	// Name names the profile (the kubeconfig context).
	Name   string
	Client kubernetes.Interface
	// Helm gives the Helm SDK's configuration for a namespace (release records in its Secrets).
	Helm func(namespace string) (*action.Configuration, error)
	// Namespace holds the probes; created (restricted) when missing and then removed. Default DefaultNamespace.
	Namespace string
	// Deletions is how many probe Pods are deleted, one at a time; default 4.
	Deletions int
	// Hold is how long a deleted probe keeps serving (its preStop sleep): a node that still routes to it after
	// Hold is reported, not measured. Default 30 s.
	Hold time.Duration
	// Interval between ticks of new connections through each node; default 20 ms.
	Interval time.Duration
	// Refusals in a row end a node's watch; default 40.
	Refusals int
	// Margin is added to the longest service-out for the recommended preStop sleep; default 2 s.
	Margin time.Duration
	// AddressType is the node address the NodePorts are reached at; default InternalIP.
	AddressType corev1.NodeAddressType
	// LoadURL, when set, is where the probes are reached instead of every node's NodePort (http or https, no
	// path): the load balancer, Ingress or node address a cluster's clients come through, leading to the Service
	// LoadServiceName in Namespace. Through one URL the nodes behind it are not told apart: its service-out is the
	// last time any of its connections reached the deleted probe.
	LoadURL string
	// LoadServiceType is that Service's type: LoadBalancer (default; the URL's host, when an address, is its
	// spec.loadBalancerIP, as a reserved static address), NodePort (the URL's port is its nodePort, for a load
	// balancer of one's own in front of the nodes) or ClusterIP (an Ingress of one's own routes to it).
	LoadServiceType corev1.ServiceType
	// Prometheus, when set, gives kube-proxy's own programming latency over the calibration.
	Prometheus promv1.API
	// Image overrides the chart's image (the lab plays the chart's default).
	Image  plan.Image
	Logger *slog.Logger
}

// DefaultNamespace holds a calibration's probes.
const DefaultNamespace = "rollout-lab-calibrate"

func (c *Config) defaults() {
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Deletions == 0 {
		c.Deletions = 4
	}
	if c.Hold == 0 {
		c.Hold = 30 * time.Second
	}
	if c.Interval == 0 {
		c.Interval = 20 * time.Millisecond
	}
	if c.Refusals == 0 {
		c.Refusals = 40
	}
	if c.Margin == 0 {
		c.Margin = 2 * time.Second
	}
	if c.AddressType == "" {
		c.AddressType = corev1.NodeInternalIP
	}
	if c.LoadURL != "" && c.LoadServiceType == "" {
		c.LoadServiceType = corev1.ServiceTypeLoadBalancer
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run calibrates: it reads the cluster's size and kube-proxy configuration, installs the probes, deletes them one at
// a time while probing every node, removes everything it made (also on error or when ctx ends) and returns the
// profile.
func Run(ctx context.Context, cfg Config) (*plan.Profile, error) {
	cfg.defaults()
	if cfg.Deletions < 1 || cfg.Deletions > maxDeletions {
		return nil, fmt.Errorf("deletions: want 1 to %d, got %d", maxDeletions, cfg.Deletions)
	}
	c := &calibration{cfg: cfg, profile: &plan.Profile{Kind: plan.ProfileKind, Name: cfg.Name, MeasuredFrom: thisMachine()}}
	if cfg.LoadURL != "" {
		u, err := ParseLoadURL(cfg.LoadURL, cfg.LoadServiceType)
		if err != nil {
			return nil, err
		}
		c.loadURL = u
	}
	steps := c.steps()
	undo, failed, err := experiment.RunSteps(ctx, steps, cfg.Logger)
	// The cluster is left as it was whatever happened: cleanups get their own time when ctx has ended.
	undo()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", failed, err)
	}
	return c.profile, nil
}

// maxDeletions bounds one calibration (each probe is a Pod and a Service).
const maxDeletions = 20

type calibration struct {
	cfg              Config
	profile          *plan.Profile
	nodes            []node
	loadURL          *url.URL
	routes           []route
	createdNamespace bool
	probes           []probe
	samples          map[string][]time.Duration // node → service-outs
	start, end       time.Time
}

// node is a node and the address its NodePorts are reached at.
type node struct{ name, addr string }

func thisMachine() plan.Machine {
	host, _ := os.Hostname()
	m := plan.Machine{Host: host, CPUs: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// nodesOf lists the nodes with the address of addressType their NodePorts are reached at ("" when a node has none).
func nodesOf(ctx context.Context, client kubernetes.Interface, addressType corev1.NodeAddressType) ([]node, string, error) {
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, "", err
	}
	var out []node
	version := ""
	for _, n := range list.Items {
		version = n.Status.NodeInfo.KubeProxyVersion
		if version == "" {
			version = n.Status.NodeInfo.KubeletVersion
		}
		found := node{name: n.Name}
		for _, a := range n.Status.Addresses {
			if a.Type == addressType && net.ParseIP(a.Address) != nil {
				found.addr = a.Address
				break
			}
		}
		out = append(out, found)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, version, nil
}

// reachableNodes are the nodes with an address to reach their NodePorts at; none is an error.
func reachableNodes(nodes []node, addressType corev1.NodeAddressType) ([]node, error) {
	var out []node
	for _, n := range nodes {
		if n.addr != "" {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no node has an %s address to reach its NodePorts at (%d nodes): give --address-type or --load-url", addressType, len(nodes))
	}
	return out, nil
}

// ParseLoadURL checks a load URL for a load Service of serviceType: http or https, a host, no path or query; a
// NodePort Service's URL names the port (it becomes the Service's nodePort).
func ParseLoadURL(raw string, serviceType corev1.ServiceType) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("load URL %q: want http(s)://host[:port] with no path", plan.RedactURL(raw))
	}
	switch serviceType {
	case corev1.ServiceTypeLoadBalancer, corev1.ServiceTypeClusterIP:
	case corev1.ServiceTypeNodePort:
		if port, err := strconv.Atoi(u.Port()); err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("load URL %s: a NodePort load Service takes its nodePort from the URL, which names none", u.Redacted())
		}
	default:
		return nil, fmt.Errorf("load Service type %q: want LoadBalancer, NodePort or ClusterIP", serviceType)
	}
	return u, nil
}

// quantiles summarises durations (nearest rank).
func quantiles(d []time.Duration) plan.Quantiles {
	if len(d) == 0 {
		return plan.Quantiles{}
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) plan.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return plan.Duration(s[min(max(i, 0), len(s)-1)])
	}
	return plan.Quantiles{Samples: len(s), P50: at(0.5), P90: at(0.9), P99: at(0.99), Max: plan.Duration(s[len(s)-1])}
}

// errNeverLetGo is a node that still routed to a deleted probe when it stopped serving.
var errNeverLetGo = errors.New("still routed to the deleted probe when it stopped serving")
