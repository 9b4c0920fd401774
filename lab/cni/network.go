// Package cni is the lab's Pod network, what a CNI bridge plugin makes on a node: a Linux bridge on the host and a
// network namespace per Pod joined to it by a veth pair, each Pod with its own address; plus the addresses the
// lab's load balancers take for Services of type LoadBalancer.
package cni

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/rollout-lab/rollout-lab/lab/owner"
)

// The lab's Pod network: a bridge on the host and a network namespace per Pod joined to it by a veth pair.
// Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarks), so they never clash with a real network;
// each lab (one per process) takes a /20 of it. Only the lab's own bridge, veths and namespaces are created or
// touched, all named after the owning process id, so a crashed lab's leftovers are recognised and removed at the
// next start while another process's running lab is left alone.
const (
	bridgePrefix = "rlab"
	netnsPrefix  = "rlab-"
	// PodNetworkCIDR holds every lab's Pod and ingress addresses.
	PodNetworkCIDR  = "198.18.0.0/15"
	blockBits       = 12 // a /20 per lab: 4094 Pod addresses
	blocks          = 1 << (17 - blockBits)
	podPrefixLength = 32 - blockBits
	networkLockFile = "/run/rollout-lab-network.lock"
	// externalHosts are the block's last addresses (before broadcast): LoadBalancer Services' ingress addresses,
	// on the bridge, where the host and the Pods reach them.
	externalHosts = 15
	lastPodHost   = 1<<blockBits - 2 - externalHosts
)

// Network gives each Pod its own address and a way to run processes there.
type Network interface {
	// Setup makes the Pod's network and returns its IP.
	Setup(podKey string) (net.IP, error)
	// Command wraps argv so it runs in the Pod's network.
	Command(podKey string, argv []string) (*exec.Cmd, error)
	// Teardown removes the Pod's network.
	Teardown(podKey string) error
	// HostIP is the node's address as Pods see it.
	HostIP() net.IP
	// Close removes everything the network made.
	Close() error
	// AllocateExternal and ReleaseExternal hand out LoadBalancer ingress addresses the host and Pods reach.
	AllocateExternal() (net.IP, error)
	ReleaseExternal(net.IP) error
}

// Namespaces lists the Pod network namespaces of the lab run by process pid.
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

// BridgeName is the bridge of the lab run by process pid.
func BridgeName(pid int) string { return fmt.Sprintf("%s%d", bridgePrefix, pid) }

// HostIP is the bridge's address, the Pods' gateway.
func (n *NetnsNetwork) HostIP() net.IP { return n.Gateway }

// NetnsNetwork is the root-only Network: real namespaces, any unmodified app binding 0.0.0.0:PORT runs.
type NetnsNetwork struct {
	Bridge  string
	Gateway net.IP
	base    uint32 // first address of the lab's block
	owner   int
	mu      sync.Mutex
	hosts   *addressPool // host numbers in the block
	serial  uint64       // numbers the Pods' namespaces and veths: never reused while the lab runs
	pods    map[string]podNet
	closed  bool
	// external holds the ingress addresses in use.
	external map[uint32]bool
}

type podNet struct {
	ns   string
	veth string
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

// NewNetnsNetwork removes leftovers of dead labs, then creates this process's bridge on a free block.
func NewNetnsNetwork() (*NetnsNetwork, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the lab's Pod network needs root (network namespaces and a bridge); run as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("the lab's Pod network needs the ip command (Debian package iproute2): %w", err)
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
		// .0 is the block, .1 the gateway, the last the broadcast address.
		n := &NetnsNetwork{Bridge: BridgeName(pid), Gateway: gateway, base: base, owner: pid,
			hosts: newAddressPool(2, lastPodHost, addressQuarantine), pods: map[string]podNet{}, external: map[uint32]bool{}}
		fail := func(err error) (*NetnsNetwork, error) {
			_ = ipCommand("link", "del", n.Bridge)
			_ = owner.RemoveMarker(pid)
			return nil, err
		}
		if err := ipCommand("link", "add", n.Bridge, "type", "bridge"); err != nil {
			return fail(err)
		}
		// A bridge whose address was never set takes the lowest address of its ports and changes it as Pods come
		// and go; Pods whose connections keep confirming the gateway's old address send their replies into the
		// void. The CNI bridge plugin pins the bridge's address for that reason (containernetworking/plugins,
		// bridge.go ensureBridge: "Set the bridge's MAC to itself"); so does the lab.
		br, err := net.InterfaceByName(n.Bridge)
		if err != nil {
			return fail(err)
		}
		for _, args := range [][]string{
			{"link", "set", n.Bridge, "address", br.HardwareAddr.String()},
			{"addr", "add", fmt.Sprintf("%s/%d", gateway, podPrefixLength), "dev", n.Bridge},
			{"link", "set", n.Bridge, "up"},
		} {
			if err := ipCommand(args...); err != nil {
				return fail(err)
			}
		}
		return n, nil
	}
	_ = owner.RemoveMarker(pid)
	return nil, fmt.Errorf("every block of %s is in use by other labs", PodNetworkCIDR)
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

// Setup creates the Pod's namespace, its veth pair on the bridge, its address and default route.
func (n *NetnsNetwork) Setup(podKey string) (net.IP, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, fmt.Errorf("pod network closed")
	}
	n.serial++
	id := n.serial
	n.mu.Unlock()
	host, err := n.hosts.take()
	if err != nil {
		return nil, fmt.Errorf("pod %s network: %w", podKey, err)
	}
	p := podNet{ns: fmt.Sprintf("%s%d-%d", netnsPrefix, n.owner, id),
		veth: "rv" + strconv.FormatInt(int64(n.owner), 36) + "-" + strconv.FormatInt(int64(id), 36), ip: ipv4(n.base + host), host: host}
	steps := [][]string{
		{"netns", "add", p.ns},
		{"link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.ns},
		{"link", "set", p.veth, "master", n.Bridge, "up"},
		{"-n", p.ns, "addr", "add", fmt.Sprintf("%s/%d", p.ip, podPrefixLength), "dev", "eth0"},
		{"-n", p.ns, "link", "set", "eth0", "up"},
		{"-n", p.ns, "link", "set", "lo", "up"},
		{"-n", p.ns, "route", "add", "default", "via", n.Gateway.String()},
	}
	for _, args := range steps {
		if err := ipCommand(args...); err != nil {
			_ = ipCommand("netns", "del", p.ns)
			n.hosts.release(host)
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
		n.hosts.release(p.host)
	}
	return err
}

// Close removes every namespace and the bridge.
func (n *NetnsNetwork) Close() error {
	n.mu.Lock()
	n.closed = true
	keys := make([]string, 0, len(n.pods))
	for k := range n.pods {
		keys = append(keys, k)
	}
	n.mu.Unlock()
	var errs []error
	for _, k := range keys {
		if err := n.Teardown(k); err != nil {
			errs = append(errs, err)
		}
	}
	if err := ipCommand("link", "del", n.Bridge); err != nil {
		errs = append(errs, err)
	} else if err := owner.RemoveMarker(n.owner); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("pod network cleanup: %v", errs)
	}
	return nil
}

// AllocateExternal gives a LoadBalancer Service an ingress address: one of the block's last, added to the bridge.
func (n *NetnsNetwork) AllocateExternal() (net.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for host := uint32(lastPodHost + 1); host <= 1<<blockBits-2; host++ {
		if n.external[host] {
			continue
		}
		ip := ipv4(n.base + host)
		if err := ipCommand("addr", "add", ip.String()+"/32", "dev", n.Bridge); err != nil {
			return nil, err
		}
		n.external[host] = true
		return ip, nil
	}
	return nil, fmt.Errorf("the lab's %d load balancer addresses are all in use", externalHosts)
}

// ReleaseExternal takes an ingress address off the bridge.
func (n *NetnsNetwork) ReleaseExternal(ip net.IP) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := ip.To4()
	if v == nil {
		return fmt.Errorf("not an IPv4 address: %s", ip)
	}
	host := (uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])) - n.base
	if !n.external[host] {
		return nil
	}
	delete(n.external, host)
	return ipCommand("addr", "del", ip.String()+"/32", "dev", n.Bridge)
}
