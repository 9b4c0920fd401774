// Package cni is the lab's network, laid out as a simple CNI (flannel host-gw, kindnet) lays out a cluster's: every
// Node is a network namespace with its own address on a node network (a bridge in the host), its own Pod CIDR
// (Node.spec.podCIDR, from the controller-manager's node IPAM controller) and a bridge inside the node for its
// Pods; each Pod is a network namespace joined to its node's bridge by a veth pair; the nodes route each other's
// Pod CIDRs through their node addresses, and the host reaches node addresses and Pod CIDRs through routes on its
// own lab bridge. It also hands out the addresses the lab's load balancers take for Services of type LoadBalancer.
package cni

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/rollout-lab/rollout-lab/lab/owner"
)

// Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarks), so they never clash with a real network;
// each lab (one per process) takes a /19 of it: its first /24 is the node network (the host's bridge .1, nodes
// from .2, load balancer addresses at the end), its second the background endpoints' (never answered), its upper
// /20 the cluster CIDR, a /24 per node. Only the lab's own
// bridge, veths and namespaces are created or touched, all named after the owning process id, so a crashed lab's
// leftovers are recognised and removed at the next start while another process's running lab is left alone; the
// host's routes to the lab's addresses are on the lab's bridge and go with it.
const (
	bridgePrefix = "rlab"
	netnsPrefix  = "rlab-"
	// PodNetworkCIDR holds every lab's node, Pod and ingress addresses.
	PodNetworkCIDR = "198.18.0.0/15"
	blockBits      = 13 // a /19 per lab
	blocks         = 1 << (17 - blockBits)
	// NodeCIDRMaskSize is each node's Pod CIDR, as kube-controller-manager's --node-cidr-mask-size default.
	NodeCIDRMaskSize = 24
	// MaxNodes is how many node Pod CIDRs the cluster CIDR (the block's upper /20) holds.
	MaxNodes          = 1 << (NodeCIDRMaskSize - 20)
	nodeNetworkPrefix = 24
	networkLockFile   = "/run/rollout-lab-network.lock"
	// externalHosts are the node network's last addresses (before broadcast): LoadBalancer Services' ingress
	// addresses, on the load balancer's host, where the host and every node reach them.
	externalHosts = 15
	firstExternal = 1<<(32-nodeNetworkPrefix) - 1 - externalHosts
	// balancerHost is the load balancer host's own address on the node network, just below the ingress addresses.
	balancerHost = firstExternal - 1
	// balancerSuffix names the load balancer host's namespace (rlab-<pid>-lb) and its link (rn<pid>-lb).
	balancerSuffix = "lb"
	// nodeBridge is the bridge in every node's namespace that its Pods' veths join (the CNI bridge plugin's name).
	nodeBridge = "cni0"
)

// Network gives each node and each Pod its own network and address, and ways to run processes there.
type Network interface {
	// AddNode makes the node's namespace on the node network with a bridge for podCIDR (from Node.spec.podCIDR)
	// and routes to and from it; it returns the node's address.
	AddNode(name, podCIDR string) (net.IP, error)
	// NodeIP is the node's address on the node network (nil for a node not added).
	NodeIP(node string) net.IP
	// NodeCommand wraps argv so it runs in the node's network namespace (kube-proxy).
	NodeCommand(node string, argv []string) (*exec.Cmd, error)
	// NodeNamespace is the name of the node's network namespace (as `ip netns` knows it).
	NodeNamespace(node string) (string, bool)
	// Setup makes the Pod's network on its node and returns its IP.
	Setup(podKey, node string) (net.IP, error)
	// Command wraps argv so it runs in the Pod's network.
	Command(podKey string, argv []string) (*exec.Cmd, error)
	// Teardown removes the Pod's network.
	Teardown(podKey string) error
	// HostIP is the host's address on the node network: the lab's servers the nodes reach listen there.
	HostIP() net.IP
	// ClusterCIDR holds every node's Pod CIDR (the node IPAM controller's --cluster-cidr).
	ClusterCIDR() string
	// Close removes everything the network made.
	Close() error
	// AllocateExternal and ReleaseExternal hand out LoadBalancer ingress addresses the host and nodes reach;
	// AllocateExternal gives the one asked for (a Service's spec.loadBalancerIP) when it is one of them and free.
	AllocateExternal(want net.IP) (net.IP, error)
	ReleaseExternal(net.IP) error
	// BalancerNamespace is the load balancer host's network namespace: the ingress addresses live there, and the
	// balancers listen and open their backend connections from it, as a cloud's balancer does from hosts of its own.
	BalancerNamespace() string
	// BalancerIP is the load balancer host's own address on the node network: its backend connections' source.
	BalancerIP() net.IP
	// BackgroundCIDR holds the addresses of background endpoints: the rest of a cluster, which every node's
	// kube-proxy programs but no connection goes to; nothing has these addresses.
	BackgroundCIDR() string
}

// Namespaces lists the node and Pod network namespaces of the lab run by process pid.
func Namespaces(pid int) ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if maker, ok := ownerOf(name); ok && maker == pid && strings.HasPrefix(name, netnsPrefix) {
			names = append(names, name)
		}
	}
	return names, nil
}

// BridgeName is the node network's bridge of the lab run by process pid.
func BridgeName(pid int) string { return fmt.Sprintf("%s%d", bridgePrefix, pid) }

// NetnsNetwork is the root-only Network: real namespaces, any unmodified app binding 0.0.0.0:PORT runs.
type NetnsNetwork struct {
	// Bridge is the node network's bridge in the host; Gateway its address, the nodes' default route.
	Bridge  string
	Gateway net.IP
	base    uint32 // first address of the lab's block
	owner   int
	mu      sync.Mutex
	serial  uint64 // numbers the Pods' namespaces and veths: never reused while the lab runs
	nodes   map[string]*nodeNet
	pods    map[string]podNet
	closed  bool
	// external holds the ingress addresses in use.
	external map[uint32]bool
	// balancerNS is the load balancer host's namespace, balancerVeth the host's end of its link.
	balancerNS, balancerVeth string
	// newPool makes a node's pool of Pod host numbers (tests shrink it).
	newPool func() *addressPool
}

type nodeNet struct {
	name    string
	index   int
	ns      string
	ip      net.IP
	podCIDR *net.IPNet
	gateway net.IP // the node bridge's address, its Pods' default route
	hosts   *addressPool
	veth    string // the host's end of the node's link to the node network
}

type podNet struct {
	ns   string
	veth string
	node *nodeNet
	ip   net.IP
	host uint32
}

func ipCommand(args ...string) error {
	cmd := exec.Command("ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

func ipv4(v uint32) net.IP { return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v)) }

func ipValue(ip net.IP) uint32 {
	v := ip.To4()
	return uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])
}

// NewNetnsNetwork removes leftovers of dead labs, then creates this process's node network bridge on a free block.
func NewNetnsNetwork() (*NetnsNetwork, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the lab's network needs root (network namespaces and bridges); run as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("the lab's network needs the ip command (Debian package iproute2): %w", err)
	}
	lock, err := os.OpenFile(networkLockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	// Labs starting at once in several processes must not pick the same block.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return nil, err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := CleanStale(); err != nil {
		return nil, err
	}
	used := map[string]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipnet, ok := a.(*net.IPNet); ok {
				used[ipnet.IP.String()] = true
			}
		}
	}
	self, err := owner.Self()
	if err != nil {
		return nil, err
	}
	pid := self.PID
	if err := owner.WriteMarker(self); err != nil {
		return nil, fmt.Errorf("lab network marker: %w", err)
	}
	first := uint32(198)<<24 | uint32(18)<<16
	for i := 0; i < blocks; i++ {
		block := uint32((pid + i) % blocks)
		base := first + block<<blockBits
		gateway := ipv4(base + 1)
		if used[gateway.String()] {
			continue
		}
		n := &NetnsNetwork{Bridge: BridgeName(pid), Gateway: gateway, base: base, owner: pid,
			nodes: map[string]*nodeNet{}, pods: map[string]podNet{}, external: map[uint32]bool{},
			newPool: func() *addressPool { return newAddressPool(2, 1<<(32-NodeCIDRMaskSize)-2, addressQuarantine) }}
		fail := func(err error) (*NetnsNetwork, error) {
			_ = ipCommand("link", "del", n.Bridge)
			_ = owner.RemoveMarker(pid)
			return nil, err
		}
		if err := makeBridge("", n.Bridge, fmt.Sprintf("%s/%d", gateway, nodeNetworkPrefix)); err != nil {
			return fail(err)
		}
		if err := n.addBalancerHost(); err != nil {
			_ = ipCommand("netns", "del", n.balancerNS)
			return fail(err)
		}
		return n, nil
	}
	_ = owner.RemoveMarker(pid)
	return nil, fmt.Errorf("every block of %s is in use by other labs", PodNetworkCIDR)
}

// makeBridge creates a bridge with address cidr in namespace ns ("" for the host). A bridge whose address was
// never set takes the lowest address of its ports and changes it as ports come and go; peers whose connections keep
// confirming the old address send their replies into the void. The CNI bridge plugin pins the bridge's address for
// that reason (containernetworking/plugins, bridge.go ensureBridge: "Set the bridge's MAC to itself"); so does the
// lab.
func makeBridge(ns, name, cidr string) error {
	in := func(args ...string) []string {
		if ns == "" {
			return args
		}
		return append([]string{"-n", ns}, args...)
	}
	if err := ipCommand(in("link", "add", name, "type", "bridge")...); err != nil {
		return err
	}
	out, err := exec.Command("ip", in("-o", "link", "show", name)...).Output()
	if err != nil {
		return fmt.Errorf("ip link show %s: %w", name, err)
	}
	fields := strings.Fields(string(out))
	mac := ""
	for i, f := range fields {
		if f == "link/ether" && i+1 < len(fields) {
			mac = fields[i+1]
		}
	}
	if mac == "" {
		return fmt.Errorf("bridge %s has no hardware address: %s", name, out)
	}
	for _, args := range [][]string{
		{"link", "set", name, "address", mac},
		{"addr", "add", cidr, "dev", name},
		{"link", "set", name, "up"},
	} {
		if err := ipCommand(in(args...)...); err != nil {
			return err
		}
	}
	return nil
}

// addBalancerHost makes the load balancer's host: a namespace on the node network with an address of its own, where
// the ingress addresses go. On a cloud the balancer runs on hosts apart from the clients and the nodes; sharing the
// client's host would make both draw their source ports (and each closed connection's TIME_WAIT, 60 s) from one
// range, which halves the per-connection rate the lab can hold and is nothing a cluster does.
func (n *NetnsNetwork) addBalancerHost() error {
	n.balancerNS = fmt.Sprintf("%s%d-%s", netnsPrefix, n.owner, balancerSuffix)
	n.balancerVeth = "rn" + strconv.FormatInt(int64(n.owner), 36) + "-" + balancerSuffix
	for _, args := range [][]string{
		{"netns", "add", n.balancerNS},
		{"link", "add", n.balancerVeth, "type", "veth", "peer", "name", "eth0", "netns", n.balancerNS},
		{"link", "set", n.balancerVeth, "master", n.Bridge, "up"},
		{"-n", n.balancerNS, "addr", "add", fmt.Sprintf("%s/%d", n.BalancerIP(), nodeNetworkPrefix), "dev", "eth0"},
		{"-n", n.balancerNS, "link", "set", "eth0", "up"},
		{"-n", n.balancerNS, "link", "set", "lo", "up"},
		{"-n", n.balancerNS, "route", "add", "default", "via", n.Gateway.String()},
	} {
		if err := ipCommand(args...); err != nil {
			return fmt.Errorf("load balancer host: %w", err)
		}
	}
	return nil
}

// BalancerNamespace is the load balancer host's namespace.
func (n *NetnsNetwork) BalancerNamespace() string { return n.balancerNS }

// BalancerIP is the load balancer host's address on the node network.
func (n *NetnsNetwork) BalancerIP() net.IP { return ipv4(n.base + balancerHost) }

// ClusterCIDR is the block's upper /20: every node's Pod CIDR comes from it.
func (n *NetnsNetwork) ClusterCIDR() string {
	return fmt.Sprintf("%s/%d", ipv4(n.base+1<<(blockBits-1)), 32-(blockBits-1))
}

// BackgroundCIDR is the block's second /24, between the node network and the cluster CIDR.
func (n *NetnsNetwork) BackgroundCIDR() string {
	return fmt.Sprintf("%s/%d", ipv4(n.base+1<<(32-nodeNetworkPrefix)), nodeNetworkPrefix)
}

// HostIP is the host's address on the node network.
func (n *NetnsNetwork) HostIP() net.IP { return n.Gateway }

// NodeIP is the node's address.
func (n *NetnsNetwork) NodeIP(node string) net.IP {
	n.mu.Lock()
	defer n.mu.Unlock()
	if nn, ok := n.nodes[node]; ok {
		return nn.ip
	}
	return nil
}

// NodeNamespace is the node's network namespace.
func (n *NetnsNetwork) NodeNamespace(node string) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	nn, ok := n.nodes[node]
	if !ok {
		return "", false
	}
	return nn.ns, true
}

// NodeCommand runs argv in the node's namespace.
func (n *NetnsNetwork) NodeCommand(node string, argv []string) (*exec.Cmd, error) {
	ns, ok := n.NodeNamespace(node)
	if !ok {
		return nil, fmt.Errorf("node %s has no network", node)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns}, argv...)...), nil
}

// AddNode makes the node's namespace: eth0 on the node network, forwarding on, a bridge for its Pod CIDR, a default
// route to the host, routes to the other nodes' Pod CIDRs through their addresses (host-gw) and theirs to it, and
// the host's and the load balancer host's routes to it.
func (n *NetnsNetwork) AddNode(name, podCIDR string) (net.IP, error) {
	_, cidr, err := net.ParseCIDR(podCIDR)
	if err != nil {
		return nil, fmt.Errorf("node %s Pod CIDR %q: %w", name, podCIDR, err)
	}
	if ones, _ := cidr.Mask.Size(); ones != NodeCIDRMaskSize {
		return nil, fmt.Errorf("node %s Pod CIDR %s: want a /%d", name, podCIDR, NodeCIDRMaskSize)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, fmt.Errorf("lab network closed")
	}
	if nn, ok := n.nodes[name]; ok {
		n.mu.Unlock()
		if nn.podCIDR.String() != cidr.String() {
			return nil, fmt.Errorf("node %s already has Pod CIDR %s, not %s", name, nn.podCIDR, cidr)
		}
		return nn.ip, nil
	}
	index := len(n.nodes)
	n.serial++
	id := n.serial
	others := make([]*nodeNet, 0, len(n.nodes))
	for _, o := range n.nodes {
		others = append(others, o)
	}
	n.mu.Unlock()
	if index >= MaxNodes {
		return nil, fmt.Errorf("the lab's network holds %d nodes", MaxNodes)
	}
	nn := &nodeNet{name: name, index: index, ns: fmt.Sprintf("%s%d-n%d", netnsPrefix, n.owner, index),
		ip: ipv4(n.base + 2 + uint32(index)), podCIDR: cidr, gateway: ipv4(ipValue(cidr.IP) + 1), hosts: n.newPool()}
	// Named by a serial never reused while the lab runs: a namespace's devices go some time after `ip netns del`.
	nn.veth = "rn" + strconv.FormatInt(int64(n.owner), 36) + "-" + strconv.FormatUint(id, 36)
	veth := nn.veth
	steps := [][]string{
		{"netns", "add", nn.ns},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", nn.ns},
		{"link", "set", veth, "master", n.Bridge, "up"},
		{"-n", nn.ns, "addr", "add", fmt.Sprintf("%s/%d", nn.ip, nodeNetworkPrefix), "dev", "eth0"},
		{"-n", nn.ns, "link", "set", "eth0", "up"},
		{"-n", nn.ns, "link", "set", "lo", "up"},
		{"-n", nn.ns, "route", "add", "default", "via", n.Gateway.String()},
		{"netns", "exec", nn.ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"},
	}
	fail := func(err error) (net.IP, error) {
		_ = ipCommand("netns", "del", nn.ns)
		return nil, fmt.Errorf("node %s network: %w", name, err)
	}
	for _, args := range steps {
		if err := ipCommand(args...); err != nil {
			return fail(err)
		}
	}
	if err := makeBridge(nn.ns, nodeBridge, fmt.Sprintf("%s/%d", nn.gateway, NodeCIDRMaskSize)); err != nil {
		return fail(err)
	}
	routes := [][]string{
		{"route", "add", cidr.String(), "via", nn.ip.String(), "dev", n.Bridge},
		// The balancer's answers to a Pod that called an ingress address go straight to the Pod's node.
		{"-n", n.balancerNS, "route", "add", cidr.String(), "via", nn.ip.String()},
	}
	for _, o := range others {
		routes = append(routes,
			[]string{"-n", nn.ns, "route", "add", o.podCIDR.String(), "via", o.ip.String()},
			[]string{"-n", o.ns, "route", "add", cidr.String(), "via", nn.ip.String()})
	}
	for _, args := range routes {
		if err := ipCommand(args...); err != nil {
			return fail(err)
		}
	}
	n.mu.Lock()
	n.nodes[name] = nn
	n.mu.Unlock()
	return nn.ip, nil
}

// ownerOf reads the process id from a lab's bridge (rlab<pid>) or namespace (rlab-<pid>-<n>) name.
func ownerOf(name string) (int, bool) {
	switch {
	case strings.HasPrefix(name, netnsPrefix):
		pid, _, ok := strings.Cut(strings.TrimPrefix(name, netnsPrefix), "-")
		n, err := strconv.Atoi(pid)
		return n, ok && err == nil
	case strings.HasPrefix(name, bridgePrefix):
		n, err := strconv.Atoi(strings.TrimPrefix(name, bridgePrefix))
		return n, err == nil
	}
	return 0, false
}

// Cleaned is what CleanStaleNetwork removed.
type Cleaned struct {
	Namespaces []string // network namespaces
	Processes  int      // processes still running in them, killed
	Links      []string // bridges
}

// Empty says whether nothing was left to remove.
func (c Cleaned) Empty() bool { return len(c.Namespaces)+len(c.Links)+c.Processes == 0 }

// CleanStale removes the namespaces, processes and bridges that labs of dead processes left (after a crash,
// say); those of running labs stay, and so does anything named like them that no lab of this project marked.
func CleanStale() (Cleaned, error) {
	var cleaned Cleaned
	stale := map[int]bool{}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return cleaned, fmt.Errorf("ip netns list: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		pid, ok := ownerOf(name)
		if !ok || !strings.HasPrefix(name, netnsPrefix) || !owner.Stale(pid) {
			continue
		}
		stale[pid] = true
		// Processes of a crashed lab may still run in it; deleting the namespace would not stop them.
		if pids, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, field := range strings.Fields(string(pids)) {
				if pid, err := strconv.Atoi(field); err == nil && syscall.Kill(pid, syscall.SIGKILL) == nil {
					cleaned.Processes++
				}
			}
		}
		if err := ipCommand("netns", "del", name); err != nil {
			return cleaned, err
		}
		cleaned.Namespaces = append(cleaned.Namespaces, name)
	}
	interfaces, err := net.Interfaces()
	if err != nil {
		return cleaned, err
	}
	for _, iface := range interfaces {
		if pid, ok := ownerOf(iface.Name); ok && strings.HasPrefix(iface.Name, bridgePrefix) && !strings.HasPrefix(iface.Name, netnsPrefix) && owner.Stale(pid) {
			if err := ipCommand("link", "del", iface.Name); err != nil {
				return cleaned, err
			}
			cleaned.Links = append(cleaned.Links, iface.Name)
			stale[pid] = true
		}
	}
	// Markers of dead labs with nothing left (the lab closed its network but died before removing the marker).
	if entries, err := os.ReadDir(owner.MarkerDir); err == nil {
		for _, e := range entries {
			if pid, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".json")); err == nil && owner.Stale(pid) {
				stale[pid] = true
			}
		}
	}
	for pid := range stale {
		if err := owner.RemoveMarker(pid); err != nil {
			return cleaned, err
		}
	}
	return cleaned, nil
}

// Setup creates the Pod's namespace on its node: a veth pair whose node end joins the node's bridge (hairpin on,
// as the CNI bridge plugin's hairpinMode, so a Pod reaches itself through its Service), its address from the node's
// Pod CIDR and the default route through the node's bridge.
func (n *NetnsNetwork) Setup(podKey, node string) (net.IP, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, fmt.Errorf("pod network closed")
	}
	nn, ok := n.nodes[node]
	n.serial++
	id := n.serial
	n.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("pod %s network: node %q has no network", podKey, node)
	}
	host, err := nn.hosts.take()
	if err != nil {
		return nil, fmt.Errorf("pod %s network on node %s: %w", podKey, node, err)
	}
	p := podNet{ns: fmt.Sprintf("%s%d-%d", netnsPrefix, n.owner, id), node: nn,
		veth: "rv" + strconv.FormatInt(int64(n.owner), 36) + "-" + strconv.FormatInt(int64(id), 36), ip: ipv4(ipValue(nn.podCIDR.IP) + host), host: host}
	steps := [][]string{
		{"netns", "add", p.ns},
		{"-n", nn.ns, "link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.ns},
		{"-n", nn.ns, "link", "set", p.veth, "master", nodeBridge},
		{"-n", nn.ns, "link", "set", p.veth, "type", "bridge_slave", "hairpin", "on"},
		{"-n", nn.ns, "link", "set", p.veth, "up"},
		{"-n", p.ns, "addr", "add", fmt.Sprintf("%s/%d", p.ip, NodeCIDRMaskSize), "dev", "eth0"},
		{"-n", p.ns, "link", "set", "eth0", "up"},
		{"-n", p.ns, "link", "set", "lo", "up"},
		{"-n", p.ns, "route", "add", "default", "via", nn.gateway.String()},
	}
	for _, args := range steps {
		if err := ipCommand(args...); err != nil {
			_ = ipCommand("netns", "del", p.ns)
			nn.hosts.release(host)
			return nil, fmt.Errorf("pod %s network: %w", podKey, err)
		}
	}
	n.mu.Lock()
	n.pods[podKey] = p
	n.mu.Unlock()
	return p.ip, nil
}

// Command runs argv inside the Pod's namespace; `ip netns exec` replaces itself with argv, so the process is the app.
func (n *NetnsNetwork) Command(podKey string, argv []string) (*exec.Cmd, error) {
	n.mu.Lock()
	p, ok := n.pods[podKey]
	n.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("pod %s has no network", podKey)
	}
	return exec.Command("ip", append([]string{"netns", "exec", p.ns}, argv...)...), nil
}

// Teardown deletes the Pod's namespace, which deletes its veth pair.
func (n *NetnsNetwork) Teardown(podKey string) error {
	n.mu.Lock()
	p, ok := n.pods[podKey]
	delete(n.pods, podKey)
	n.mu.Unlock()
	if !ok {
		return nil
	}
	err := ipCommand("netns", "del", p.ns)
	if err == nil {
		p.node.hosts.release(p.host)
	}
	return err
}

// Close removes every Pod's and node's namespace and the bridge (the host's routes go with it). Processes still
// running in a node's namespace (its kube-proxy) are the caller's to stop first.
func (n *NetnsNetwork) Close() error {
	n.mu.Lock()
	n.closed = true
	keys := make([]string, 0, len(n.pods))
	for k := range n.pods {
		keys = append(keys, k)
	}
	nodes := make([]*nodeNet, 0, len(n.nodes))
	for _, nn := range n.nodes {
		nodes = append(nodes, nn)
	}
	n.nodes = map[string]*nodeNet{}
	n.mu.Unlock()
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		if err := n.Teardown(k); err != nil {
			errs = append(errs, err)
		}
	}
	for _, nn := range nodes {
		// The link first: a deleted namespace's devices go asynchronously, the link must not outlive the lab.
		if err := ipCommand("link", "del", nn.veth); err != nil {
			errs = append(errs, err)
		}
		if err := ipCommand("netns", "del", nn.ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ipCommand("link", "del", n.balancerVeth); err != nil {
		errs = append(errs, err)
	}
	if err := ipCommand("netns", "del", n.balancerNS); err != nil {
		errs = append(errs, err)
	}
	if err := ipCommand("link", "del", n.Bridge); err != nil {
		errs = append(errs, err)
	} else if err := owner.RemoveMarker(n.owner); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("lab network cleanup: %v", errs)
	}
	return nil
}

// AllocateExternal gives a LoadBalancer Service an ingress address: one of the node network's last, on the load
// balancer's host (the host and the nodes reach it on the node network). want, when not nil, is the address the
// Service asks for (spec.loadBalancerIP, as a cloud's reserved static address): it must be one of them and free.
func (n *NetnsNetwork) AllocateExternal(want net.IP) (net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	first, last := uint32(firstExternal), uint32(firstExternal+externalHosts)
	if want != nil {
		host := uint32(0)
		if want.To4() != nil {
			host = ipValue(want) - n.base
		}
		switch {
		case want.To4() == nil || ipValue(want) < n.base || host < first || host >= last:
			return nil, fmt.Errorf("loadBalancerIP %s is not one of the lab's load balancer addresses (%s to %s)", want, ipv4(n.base+first), ipv4(n.base+last-1))
		case n.external[host]:
			return nil, fmt.Errorf("loadBalancerIP %s is in use by another Service", want)
		}
		first, last = host, host+1
	}
	for host := first; host < last; host++ {
		if n.external[host] {
			continue
		}
		ip := ipv4(n.base + host)
		if err := ipCommand("-n", n.balancerNS, "addr", "add", ip.String()+"/32", "dev", "eth0"); err != nil {
			return nil, err
		}
		n.external[host] = true
		return ip, nil
	}
	return nil, fmt.Errorf("the lab's %d load balancer addresses are all in use", externalHosts)
}

// ReleaseExternal takes an ingress address off the load balancer's host.
func (n *NetnsNetwork) ReleaseExternal(ip net.IP) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ip.To4() == nil {
		return fmt.Errorf("not an IPv4 address: %s", ip)
	}
	host := ipValue(ip) - n.base
	if !n.external[host] {
		return nil
	}
	delete(n.external, host)
	return ipCommand("-n", n.balancerNS, "addr", "del", ip.String()+"/32", "dev", "eth0")
}
