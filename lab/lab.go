// Package lab is rollout-lab's embedded Kubernetes: it starts, wires and stops the components it plays, each a
// package named for the Kubernetes part it stands for:
//   - lab/controlplane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler from k8s.io/kubernetes, in
//     the runner's process, on loopback, with TLS, client certificates and RBAC;
//   - lab/kubelet: the node agent, Pods as local processes with the kubelet's probes, hooks and termination, their
//     CPU through lab/cgroups (the kubelet's cgroup settings);
//   - lab/cni: the network as a simple CNI makes it: a namespace per node on a node network, a Pod CIDR and bridge
//     per node, a namespace and address per Pod;
//   - lab/kubeproxy: the real kube-proxy on every node, in the node's namespace, and what its rules do;
//   - lab/loadbalancer: a cloud-like balancer for Services of type LoadBalancer, over the nodes' NodePorts;
//   - lab/owner: which lab made what, so only a dead lab's leftovers are cleaned up.
//
// What happens to Pods is recorded into the timeline package.
package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/lab/controlplane"
	"github.com/rollout-lab/rollout-lab/lab/kubelet"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
	"github.com/rollout-lab/rollout-lab/lab/loadbalancer"
	"github.com/rollout-lab/rollout-lab/lab/owner"
)

// CowwebImages are the images the lab plays with the project's cowweb: the upstream image the chart defaults to
// and the project's own.
var CowwebImages = []string{"ghcr.io/hhiroshell/cowweb-go/cowweb", "ghcr.io/rollout-lab/cowweb"}

// Options configure a lab.
type Options struct {
	// Dir holds the lab's state: certificates, etcd, logs, kubeconfig, container logs, events.
	Dir string
	// Nodes is how many Nodes the node agent runs; default 3.
	Nodes int
	// Cowweb is the argv that runs the project's cowweb (e.g. the runner itself with its cowweb subcommand).
	Cowweb []string
	// Images maps more images to local executables (image or repository → argv).
	Images map[string][]string
	// KubeProxy is how the nodes' kube-proxies are configured; zero: kubeproxy.DefaultConfig.
	KubeProxy kubeproxy.Config
	// Background is the rest of a cluster, programmed by every node's kube-proxy; zero: none.
	Background Background
	// KubeProxyCommand is the argv that runs kube-proxy (the runner with its hidden kube-proxy subcommand); empty:
	// this executable with proxymain.Subcommand, which its main must dispatch.
	KubeProxyCommand []string
	// LoadBalancer configures the balancers of Services of type LoadBalancer; nil: loadbalancer.Default.
	LoadBalancer *loadbalancer.Options
	// NodeCPU is each node's CPU in milli-CPU; 0: DefaultNodeCPU (the machine's CPUs less ReservedCPU, shared).
	NodeCPU int64
	// ReservedCPU is kept for the runner and control plane when NodeCPU is derived; 0: DefaultReservedCPU.
	ReservedCPU int64
	// Metrics, when set, get the lab's lifecycle metrics.
	Metrics *Metrics
	Logger  *slog.Logger
}

// Lab is a running lab: control plane, node agent and Pod network.
type Lab struct {
	*controlplane.ControlPlane
	Agent     *kubelet.Agent
	Network   cni.Network
	Proxies   *kubeproxy.Proxies
	Balancers *loadbalancer.Balancers
	Cgroups   *cgroups.Cgroups // nil when the host gives no cgroup with a cpu controller (CPU.Reason says why)
	CPU       CPUModel
	// Background is what the lab was started with, made in BackgroundTook before the kube-proxies started.
	Background     Background
	BackgroundTook time.Duration
	metrics        *Metrics
}

// CPUModel is what a lab node is, CPU-wise: reported with every result.
type CPUModel struct {
	NodeMilli     int64  `json:"nodeMilliCPU"`
	ReservedMilli int64  `json:"reservedMilliCPU"`
	MachineCPUs   int    `json:"machineCPUs"`
	Cgroup        string `json:"cgroup,omitempty"` // "v1", "v2", or empty when not enforced
	Reason        string `json:"reason,omitempty"` // why not enforced
}

// String describes the model in one sentence.
func (m CPUModel) String() string {
	s := fmt.Sprintf("each node has %s CPU (capacity and allocatable)", cgroups.FormatMilliCPU(m.NodeMilli))
	if m.Cgroup == "" {
		return s + fmt.Sprintf(", not enforced (%s): Pods share the machine's %d CPUs with the runner", m.Reason, m.MachineCPUs)
	}
	return s + fmt.Sprintf(", enforced by cgroup %s CFS quota; Pods get shares from requests and quota from limits as the kubelet sets them; %s of the machine's %d CPUs stay with the runner and control plane",
		m.Cgroup, cgroups.FormatMilliCPU(m.ReservedMilli), m.MachineCPUs)
}

// StringJa describes the model in one Japanese sentence.
func (m CPUModel) StringJa() string {
	s := fmt.Sprintf("各ノードの CPU は %s (capacity と allocatable)", cgroups.FormatMilliCPU(m.NodeMilli))
	if m.Cgroup == "" {
		return s + fmt.Sprintf("、制限なし (%s): Pod はマシンの %d CPU をランナーと共有する", m.Reason, m.MachineCPUs)
	}
	return s + fmt.Sprintf("、cgroup %s の CFS quota で制限。Pod には kubelet と同じく requests から shares、limits から quota を設定。マシンの %d CPU のうち %s はランナーとコントロールプレーン用",
		m.Cgroup, m.MachineCPUs, cgroups.FormatMilliCPU(m.ReservedMilli))
}

// Up starts a lab.
func Up(ctx context.Context, opts Options) (_ *Lab, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	images := imagesOf(opts)
	l := &Lab{metrics: opts.Metrics}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Down())
		}
	}()
	if l.Network, err = cni.NewNetnsNetwork(); err != nil {
		return l, err
	}
	l.setUpCPU(opts)
	if opts.KubeProxy == (kubeproxy.Config{}) {
		opts.KubeProxy = kubeproxy.DefaultConfig
	}
	if err := kubeproxy.Preflight(opts.KubeProxy.Mode); err != nil {
		return l, err
	}
	if len(opts.KubeProxyCommand) == 0 {
		self, err := os.Executable()
		if err != nil {
			return l, err
		}
		opts.KubeProxyCommand = []string{self, proxymain.Subcommand}
	}
	if l.ControlPlane, err = controlplane.Start(ctx, controlplane.Options{Dir: opts.Dir, Logger: opts.Logger, NodeNetworkIP: l.Network.HostIP(),
		ClusterCIDR: l.Network.ClusterCIDR(), NodeCIDRMaskSize: cni.NodeCIDRMaskSize}); err != nil {
		return l, err
	}
	l.Agent, err = kubelet.Start(ctx, l.Client, kubelet.Options{Version: controlplane.KubernetesVersion, Nodes: opts.Nodes, Images: images, Network: l.Network,
		StateDir: filepath.Join(opts.Dir, "agent"), Metrics: opts.Metrics.timeline(), Logger: opts.Logger.With("component", "node-agent"),
		NodeCPU: l.CPU.NodeMilli, Cgroups: l.Cgroups})
	if err != nil {
		return l, err
	}
	if err := kubeproxy.Publish(ctx, l.Client, opts.KubeProxy, l.Network.ClusterCIDR()); err != nil {
		return l, err
	}
	// Before the kube-proxies start, so that their first sync programs the whole cluster, as a node joining one does.
	l.Background = opts.Background
	if l.BackgroundTook, err = makeBackground(ctx, l.Config, opts.Background, l.Network.BackgroundCIDR()); err != nil {
		return l, err
	}
	if opts.Background.Services > 0 {
		opts.Logger.Info("background Services made", "services", opts.Background.Services, "endpointsPerService", opts.Background.EndpointsPerService, "took", l.BackgroundTook.Round(time.Millisecond))
	}
	if opts.Metrics != nil {
		opts.Metrics.KubeProxySetting.WithLabelValues(opts.KubeProxy.Mode, "minSyncPeriod").Set(opts.KubeProxy.MinSyncPeriod.Seconds())
		opts.Metrics.KubeProxySetting.WithLabelValues(opts.KubeProxy.Mode, "syncPeriod").Set(opts.KubeProxy.SyncPeriod.Seconds())
	}
	l.Proxies, err = kubeproxy.Start(ctx, kubeproxy.Options{Network: l.Network, Nodes: l.Agent.Nodes, Argv: opts.KubeProxyCommand,
		Kubeconfig: l.KubeProxyKubeconfig, ClusterCIDR: l.Network.ClusterCIDR(), Dir: filepath.Join(opts.Dir, "kube-proxy"),
		Config: opts.KubeProxy, Client: l.Client, Recorder: l.Agent.Events, Unwatched: []string{BackgroundNamespace}, Logger: opts.Logger.With("component", "kube-proxy")})
	if err != nil {
		return l, err
	}
	balancer := loadbalancer.Default
	if opts.LoadBalancer != nil {
		balancer = *opts.LoadBalancer
	}
	l.Balancers, err = loadbalancer.Start(l.Client, l.Proxies, l.Network, balancer, opts.Metrics.loadBalancer(), opts.Logger.With("component", "load-balancer"))
	return l, err
}

// imagesOf maps each image the lab runs to the command that plays it: the project's cowweb for cowweb's images,
// then the user's own.
func imagesOf(opts Options) map[string][]string {
	images := map[string][]string{}
	if len(opts.Cowweb) > 0 {
		for _, image := range CowwebImages {
			images[image] = opts.Cowweb
		}
	}
	for k, v := range opts.Images {
		images[k] = v
	}
	return images
}

// setUpCPU decides what a node is CPU-wise and enforces it with the kubelet's cgroups when the host has a cgroup
// CPU controller (without one, Pods run unlimited and the model says why).
func (l *Lab) setUpCPU(opts Options) {
	l.CPU = CPUModel{NodeMilli: opts.NodeCPU, ReservedMilli: opts.ReservedCPU, MachineCPUs: runtime.NumCPU()}
	if l.CPU.ReservedMilli == 0 {
		l.CPU.ReservedMilli = cgroups.DefaultReservedCPU()
	}
	if l.CPU.NodeMilli == 0 {
		l.CPU.NodeMilli = cgroups.DefaultNodeCPU(opts.Nodes, l.CPU.ReservedMilli)
	}
	var err error
	if l.Cgroups, err = cgroups.New(os.Getpid(), owner.Gone); err != nil {
		opts.Logger.Warn("Pods run without CPU limits: no cgroup CPU controller for the lab", "err", err)
		l.CPU.Reason = err.Error()
	} else {
		l.CPU.Cgroup = fmt.Sprintf("v%d", l.Cgroups.Version)
		if opts.Metrics != nil {
			opts.Metrics.CPU.SetSource(l.Cgroups)
		}
	}
	if total := l.CPU.NodeMilli * int64(opts.Nodes); total > int64(l.CPU.MachineCPUs)*1000 {
		opts.Logger.Warn("the nodes have more CPU than the machine: they will compete for it", "nodes", opts.Nodes,
			"nodeCPU", cgroups.FormatMilliCPU(l.CPU.NodeMilli), "machineCPUs", l.CPU.MachineCPUs)
	}
}

// Down stops everything the lab started and removes its processes and network; stopping twice is harmless.
func (l *Lab) Down() error {
	var errs []error
	if l.Balancers != nil {
		l.Balancers.Stop()
	}
	if l.Agent != nil {
		l.Agent.Stop()
	}
	// kube-proxy runs in the nodes' namespaces: stopped before they go.
	if l.Proxies != nil {
		errs = append(errs, l.Proxies.Stop())
	}
	if l.Network != nil {
		errs = append(errs, l.Network.Close())
		l.Network = nil
	}
	if l.Cgroups != nil {
		if l.metrics != nil {
			l.metrics.CPU.SetSource(nil)
		}
		errs = append(errs, l.Cgroups.Close())
		l.Cgroups = nil
	}
	if l.ControlPlane != nil {
		errs = append(errs, l.ControlPlane.Stop())
	}
	return errors.Join(errs...)
}
