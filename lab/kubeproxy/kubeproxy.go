// Package kubeproxy runs the real kube-proxy (k8s.io/kubernetes/cmd/kube-proxy/app, the runner re-executed as its
// hidden subcommand) on every lab node, in the node's network namespace, configured by a KubeProxyConfiguration as
// a cluster's kube-proxy is; the kernel's NAT and conntrack then route each connection as on a cluster. It also
// measures what decides a rollout's failures: the moment each node's rules stop sending new connections to a Pod
// ("service-out"), read from the node's actual ruleset as kube-proxy commits it, and tells which Pod a connection
// went to from the node's conntrack entry.
package kubeproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	componentbaseconfig "k8s.io/component-base/config/v1alpha1"
	kubeproxyconfig "k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/timeline"
	"github.com/rollout-lab/rollout-lab/timeline/clusterwatch"
)

// Modes kube-proxy runs in on the lab.
const (
	ModeNFTables = "nftables"
	ModeIPTables = "iptables"
)

// Ports kube-proxy serves on each node's address.
const (
	HealthzPort = 10256
	MetricsPort = 10249
)

// Config is what a plan sets of kube-proxy, in KubeProxyConfiguration's terms.
type Config struct {
	// Mode is nftables (the lab's default) or iptables (the default of kube-proxy itself, and of the reference
	// article's Kubernetes 1.18).
	Mode string `json:"mode"`
	// MinSyncPeriod is the least time between two syncs of the rules (nftables.minSyncPeriod / iptables.minSyncPeriod).
	MinSyncPeriod time.Duration `json:"minSyncPeriod"`
	// SyncPeriod is the full resync interval (nftables.syncPeriod / iptables.syncPeriod).
	SyncPeriod time.Duration `json:"syncPeriod"`
}

// DefaultConfig is kube-proxy's own defaulting (k8s.io/kubernetes pkg/proxy/apis/config/v1alpha1/defaults.go,
// v1.37: minSyncPeriod 1s, syncPeriod 30s), in the mode the lab prefers: nftables, GA since Kubernetes 1.33.
var DefaultConfig = Config{Mode: ModeNFTables, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second}

// String says the configuration in kube-proxy's words.
func (c Config) String() string {
	return fmt.Sprintf("kube-proxy %s mode, minSyncPeriod %s, syncPeriod %s", c.Mode, c.MinSyncPeriod, c.SyncPeriod)
}

// NoMinSyncPeriod is how the lab writes a minSyncPeriod of 0: kube-proxy v1.37's defaulting turns a zero
// minSyncPeriod into 1 s (pkg/proxy/apis/config/v1alpha1/defaults.go: a zero cannot be told from a field left out),
// while 0 meant "sync at every change" up to Kubernetes 1.18 (the 1 s default came with kubernetes/kubernetes#92836).
// One nanosecond between syncs is that: the sync runner waits it out after each run and takes the next change.
const NoMinSyncPeriod = time.Nanosecond

func effectiveMinSyncPeriod(d time.Duration) time.Duration {
	if d == 0 {
		return NoMinSyncPeriod
	}
	return d
}

// Options start the nodes' kube-proxies.
type Options struct {
	Network cni.Network
	Nodes   []string
	// Argv runs kube-proxy (the runner and its hidden subcommand); its flags follow.
	Argv []string
	// Kubeconfig authenticates as system:kube-proxy to the apiserver on the node network.
	Kubeconfig  string
	ClusterCIDR string
	// Dir holds each node's KubeProxyConfiguration and log.
	Dir      string
	Config   Config
	Client   kubernetes.Interface
	Recorder *timeline.Recorder
	// Unwatched are namespaces whose Services' rules the watch does not read (a lab's background: they never
	// change, and with thousands of them reading them all after every sync would load the node it measures).
	Unwatched []string
	Logger    *slog.Logger
}

// Proxies are the nodes' running kube-proxies and what the lab reads of their rules.
type Proxies struct {
	opts    Options
	nodes   []*nodeProxy
	factory informers.SharedInformerFactory
	stop    chan struct{}

	mu       sync.Mutex
	pods     map[string]podRef          // Pod address → the Pod that last had it
	services map[string]map[string]bool // namespace/name → ready endpoint addresses
	// iptablesChains are the Service chains iptables mode writes for the watched namespaces' Service ports, kept
	// after a Service goes (its chains may outlive its EndpointSlices by a sync; reading a chain not there costs
	// one lookup).
	iptablesChains map[string]bool
}

type podRef struct{ namespace, name, uid string }

// nodeProxy is one node's kube-proxy and the watch of its rules.
type nodeProxy struct {
	name, ns  string
	ip        net.IP
	cmd       *exec.Cmd
	exited    chan struct{}
	log       *os.File
	rules     *ruleWatch
	conntrack *conntrackSocket
}

// Node is a node's name and address.
type Node struct {
	Name string
	IP   net.IP
	// Healthz overrides the health check's address (host:port); empty: the node's kube-proxy, IP:10256.
	Healthz string
}

// HealthzURL is the node's kube-proxy health check, as cloud load balancers ask it.
func (n Node) HealthzURL() string {
	addr := n.Healthz
	if addr == "" {
		addr = net.JoinHostPort(n.IP.String(), strconv.Itoa(HealthzPort))
	}
	return "http://" + addr + "/healthz"
}

// Preflight checks that the userspace tools kube-proxy's mode execs are there, naming the package that has them.
func Preflight(mode string) error {
	tools := map[string][]string{ModeNFTables: {"nft"}, ModeIPTables: {"iptables", "iptables-save", "iptables-restore", "nft"}}
	packages := map[string]string{ModeNFTables: "nftables", ModeIPTables: "iptables (and nftables, which the lab reads the rules with)"}
	needed, ok := tools[mode]
	if !ok {
		return fmt.Errorf("kube-proxy mode %q: the lab runs %s or %s", mode, ModeNFTables, ModeIPTables)
	}
	for _, tool := range needed {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("kube-proxy's %s mode needs the %s command (Debian package %s): %w", mode, tool, packages[mode], err)
		}
	}
	return nil
}

// Start writes each node's KubeProxyConfiguration, starts its kube-proxy in the node's namespace and waits until
// every one answers /healthz, with a watch on each node's rules.
func Start(ctx context.Context, opts Options) (_ *Proxies, err error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := Preflight(opts.Config.Mode); err != nil {
		return nil, err
	}
	p := &Proxies{opts: opts, stop: make(chan struct{}), pods: map[string]podRef{}, services: map[string]map[string]bool{}, iptablesChains: map[string]bool{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Stop())
		}
	}()
	if err := p.watchEndpointSlices(); err != nil {
		return p, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return p, err
	}
	for _, name := range opts.Nodes {
		n, err := p.startNode(name)
		if n != nil {
			p.nodes = append(p.nodes, n)
		}
		if err != nil {
			return p, err
		}
	}
	for _, n := range p.nodes {
		if err := n.waitHealthy(ctx, filepath.Join(opts.Dir, "kube-proxy-"+n.name+".log")); err != nil {
			return p, err
		}
	}
	return p, nil
}

// kubeProxyConfiguration is the node's configuration as a cluster gives it (kubeadm's kube-proxy ConfigMap).
func (p *Proxies) kubeProxyConfiguration(node string) ([]byte, error) {
	return Configuration(p.opts.Config, p.opts.ClusterCIDR, p.opts.Kubeconfig, node)
}

// Configuration is a KubeProxyConfiguration for c: a node's (node and kubeconfig set), or the cluster's as kubeadm
// publishes it in the kube-proxy ConfigMap (node empty, kubeconfig the path kube-proxy's DaemonSet mounts).
func Configuration(c Config, clusterCIDR, kubeconfig, node string) ([]byte, error) {
	c.MinSyncPeriod = effectiveMinSyncPeriod(c.MinSyncPeriod)
	cfg := kubeproxyconfig.KubeProxyConfiguration{
		TypeMeta:         metav1.TypeMeta{APIVersion: "kubeproxy.config.k8s.io/v1alpha1", Kind: "KubeProxyConfiguration"},
		ClientConnection: componentbaseconfig.ClientConnectionConfiguration{Kubeconfig: kubeconfig},
		HostnameOverride: node,
		// On the node's address: load balancers health-check :10256 as the reference cloud's controller does, and
		// the embedded Prometheus scrapes :10249.
		HealthzBindAddress: fmt.Sprintf("0.0.0.0:%d", HealthzPort),
		MetricsBindAddress: fmt.Sprintf("0.0.0.0:%d", MetricsPort),
		Mode:               kubeproxyconfig.ProxyMode(c.Mode),
		IPTables:           kubeproxyconfig.KubeProxyIPTablesConfiguration{MinSyncPeriod: metav1.Duration{Duration: c.MinSyncPeriod}, SyncPeriod: metav1.Duration{Duration: c.SyncPeriod}},
		NFTables:           kubeproxyconfig.KubeProxyNFTablesConfiguration{MinSyncPeriod: metav1.Duration{Duration: c.MinSyncPeriod}, SyncPeriod: metav1.Duration{Duration: c.SyncPeriod}},
		ClusterCIDR:        clusterCIDR,
		DetectLocalMode:    kubeproxyconfig.LocalMode("ClusterCIDR"),
		// The conntrack table's size and TCP timeouts are the kernel's, shared with the host: left as they are
		// (maxPerCore 0 and zero timeouts mean "do not set").
		Conntrack: kubeproxyconfig.KubeProxyConntrackConfiguration{MaxPerCore: ptr.To[int32](0), Min: ptr.To[int32](0),
			TCPEstablishedTimeout: &metav1.Duration{}, TCPCloseWaitTimeout: &metav1.Duration{}},
	}
	return yaml.Marshal(cfg)
}

func (p *Proxies) startNode(name string) (*nodeProxy, error) {
	ns, ok := p.opts.Network.NodeNamespace(name)
	if !ok {
		return nil, fmt.Errorf("node %s has no network namespace", name)
	}
	n := &nodeProxy{name: name, ns: ns, ip: p.opts.Network.NodeIP(name), exited: make(chan struct{})}
	config, err := p.kubeProxyConfiguration(name)
	if err != nil {
		return nil, err
	}
	configFile := filepath.Join(p.opts.Dir, "kube-proxy-"+name+".yaml")
	if err := os.WriteFile(configFile, config, 0o600); err != nil {
		return nil, err
	}
	if n.log, err = os.OpenFile(filepath.Join(p.opts.Dir, "kube-proxy-"+name+".log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600); err != nil {
		return nil, err
	}
	// The rules are watched before kube-proxy writes them, so its first sync is seen too.
	if n.rules, err = startRuleWatch(ns, p.opts.Config.Mode, p.opts.Unwatched, p.watchedIPTablesChains, func(at time.Time, gone []string) { p.servicedOut(n, at, gone) }, p.opts.Logger); err != nil {
		return n, fmt.Errorf("node %s: %w", name, err)
	}
	if n.conntrack, err = openConntrack(ns); err != nil {
		return n, fmt.Errorf("node %s conntrack: %w", name, err)
	}
	argv := append(append([]string{}, p.opts.Argv...), "--config="+configFile, "--v=2")
	if n.cmd, err = p.opts.Network.NodeCommand(name, argv); err != nil {
		return n, err
	}
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	// Dies with the lab, however the lab ends.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		return n, fmt.Errorf("node %s kube-proxy: %w", name, err)
	}
	go func() {
		_ = n.cmd.Wait()
		close(n.exited)
	}()
	return n, nil
}

// waitHealthy polls the node's kube-proxy /healthz until it answers 200 (after its first sync).
func (n *nodeProxy) waitHealthy(ctx context.Context, logFile string) error {
	url := fmt.Sprintf("http://%s/healthz", net.JoinHostPort(n.ip.String(), strconv.Itoa(HealthzPort)))
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-n.exited:
			return fmt.Errorf("node %s: kube-proxy exited (%s); its log, %s:\n%s", n.name, n.cmd.ProcessState, logFile, tail(logFile, 15))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := client.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: kube-proxy not healthy at %s after 60 s; its log, %s:\n%s", n.name, url, logFile, tail(logFile, 15))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(file string, lines int) string {
	b, _ := os.ReadFile(file)
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// watchEndpointSlices keeps which Pod each endpoint address belongs to (service-out events name the Pod) and each
// Service's ready addresses (to wait for the rules to hold them).
func (p *Proxies) watchEndpointSlices() error {
	p.factory = informers.NewSharedInformerFactory(p.opts.Client, 0)
	informer := p.factory.Discovery().V1().EndpointSlices().Informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.sliceChanged(obj) },
		UpdateFunc: func(_, obj any) { p.sliceChanged(obj) },
	}); err != nil {
		return err
	}
	p.factory.Start(p.stop)
	p.factory.WaitForCacheSync(p.stop)
	return nil
}

func (p *Proxies) sliceChanged(obj any) {
	slice, ok := clusterwatch.Deleted(obj).(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	service := slice.Namespace + "/" + slice.Labels[discoveryv1.LabelServiceName]
	p.mu.Lock()
	defer p.mu.Unlock()
	ready := map[string]bool{}
	for _, e := range slice.Endpoints {
		if len(e.Addresses) == 0 {
			continue
		}
		if e.TargetRef != nil {
			p.pods[e.Addresses[0]] = podRef{namespace: e.TargetRef.Namespace, name: e.TargetRef.Name, uid: string(e.TargetRef.UID)}
		}
		if clusterwatch.EndpointReady(e) {
			ready[e.Addresses[0]] = true
		}
	}
	// One slice per Service is what the lab's Services have (at most 100 endpoints each).
	p.services[service] = ready
	if p.opts.Config.Mode == ModeIPTables && !slices.Contains(p.opts.Unwatched, slice.Namespace) {
		for _, port := range slice.Ports {
			if port.Protocol == nil {
				continue
			}
			name := service
			if port.Name != nil && *port.Name != "" {
				name += ":" + *port.Name
			}
			for _, chain := range iptablesServiceChains(name, string(*port.Protocol)) {
				p.iptablesChains[chain] = true
			}
		}
	}
}

// watchedIPTablesChains are the Service chains iptables mode writes for the watched Services, as known now.
func (p *Proxies) watchedIPTablesChains() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	chains := make([]string, 0, len(p.iptablesChains))
	for c := range p.iptablesChains {
		chains = append(chains, c)
	}
	sort.Strings(chains)
	return chains
}

// servicedOut records, for each address the node's rules no longer send new connections to, a service_out event
// at the moment the node's rules changed.
func (p *Proxies) servicedOut(n *nodeProxy, at time.Time, gone []string) {
	if p.opts.Recorder == nil {
		return
	}
	for _, ip := range gone {
		p.mu.Lock()
		ref, ok := p.pods[ip]
		p.mu.Unlock()
		ev := timeline.Event{Type: timeline.EventServiceOut, Time: at, Node: n.name, PodIP: ip,
			Message: fmt.Sprintf("%s's %s rules stopped sending new connections to %s", n.name, p.opts.Config.Mode, ip)}
		if ok {
			ev.Namespace, ev.Pod, ev.UID = ref.namespace, ref.name, ref.uid
		}
		p.opts.Recorder.Record(ev)
	}
}

// WaitProgrammed blocks until every node's rules send new connections of the Service to at least want of its ready
// endpoints, so a load that starts after it does not meet a node still programming the Service.
func (p *Proxies) WaitProgrammed(ctx context.Context, namespace, service string, want int) error {
	for {
		p.mu.Lock()
		ready := p.services[namespace+"/"+service]
		p.mu.Unlock()
		programmed := 0
		for _, n := range p.nodes {
			routed := n.rules.routed()
			count := 0
			for ip := range ready {
				if routed[ip] {
					count++
				}
			}
			if count >= want {
				programmed++
			}
		}
		if programmed == len(p.nodes) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the nodes' kube-proxies did not program %s/%s with %d endpoints (%d of %d nodes did): %w", namespace, service, want, programmed, len(p.nodes), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Nodes lists the nodes with their addresses, in order.
func (p *Proxies) Nodes() []Node {
	out := make([]Node, len(p.nodes))
	for i, n := range p.nodes {
		out[i] = Node{Name: n.name, IP: n.ip}
	}
	return out
}

// Config is the configuration the kube-proxies run with.
func (p *Proxies) Config() Config { return p.opts.Config }

// PodOf tells which Pod (namespace, name, UID) had the address most recently.
func (p *Proxies) PodOf(ip string) (namespace, name, uid string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ref, ok := p.pods[ip]
	return ref.namespace, ref.name, ref.uid, ok
}

// Routed is where a node's NAT sent a connection: the node, the Pod's address and port, and the Pod's UID.
type Routed struct {
	Node, Endpoint, PodUID string
}

// RouteOf tells, from the node's conntrack, where kube-proxy's DNAT sent the TCP connection from src to dst (as the
// node saw them arrive), refused connections included.
func (p *Proxies) RouteOf(node string, src, dst *net.TCPAddr) (Routed, error) {
	for _, n := range p.nodes {
		if n.name != node {
			continue
		}
		endpoint, err := n.conntrack.route(src, dst)
		if err != nil {
			return Routed{Node: node}, err
		}
		r := Routed{Node: node, Endpoint: endpoint.String()}
		if _, _, uid, ok := p.PodOf(endpoint.IP.String()); ok {
			r.PodUID = uid
		}
		return r, nil
	}
	return Routed{}, fmt.Errorf("no node %s", node)
}

// NodeOf finds the node whose address is ip.
func (p *Proxies) NodeOf(ip net.IP) (string, bool) {
	for _, n := range p.nodes {
		if n.ip.Equal(ip) {
			return n.name, true
		}
	}
	return "", false
}

// DialRouted opens a TCP connection from inside the node's network namespace, as a process on the node would (a
// Service's cluster IP is translated by that node's rules), and tells where the node's NAT sent it, also when the
// connect failed: the socket is bound to the node's address before the connect, so its conntrack entry is known.
func (p *Proxies) DialRouted(ctx context.Context, node, addr string) (net.Conn, Routed, error) {
	for _, n := range p.nodes {
		if n.name != node {
			continue
		}
		dst, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			return nil, Routed{Node: node}, err
		}
		conn, src, err := dialIn(ctx, n.ns, n.ip, dst)
		r := Routed{Node: node}
		if src != nil {
			if found, lookupErr := p.RouteOf(node, src, dst); lookupErr == nil {
				r = found
			}
		}
		return conn, r, err
	}
	return nil, Routed{}, fmt.Errorf("no node %s", node)
}

// RSS is each node's kube-proxy resident memory in bytes (0 when not readable).
func (p *Proxies) RSS() map[string]int64 {
	out := map[string]int64{}
	for _, n := range p.nodes {
		if n.cmd == nil || n.cmd.Process == nil {
			continue
		}
		out[n.name] = processRSS(n.cmd.Process.Pid)
	}
	return out
}

// Stop stops every kube-proxy and the watches; stopping twice is harmless.
func (p *Proxies) Stop() error {
	select {
	case <-p.stop:
		return nil
	default:
	}
	close(p.stop)
	if p.factory != nil {
		p.factory.Shutdown()
	}
	var errs []error
	for _, n := range p.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-n.exited:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
				<-n.exited
			}
		}
		if n.rules != nil {
			n.rules.stop()
		}
		if n.conntrack != nil {
			n.conntrack.close()
		}
		if n.log != nil {
			errs = append(errs, n.log.Close())
		}
	}
	return errors.Join(errs...)
}

func processRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) > 0 {
				kb, _ := strconv.ParseInt(fields[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// sortedKeys is for stable messages.
func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
