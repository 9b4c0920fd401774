package lab

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
)

// The lab's Pod network: a bridge on the host and a network namespace per Pod joined to it by a veth pair.
// Addresses come from 198.18.0.0/15 (RFC 2544, reserved for benchmarks), so they never clash with a real network.
// Only the lab's own bridge, veths and namespaces are created or touched; everything is named with the prefixes
// below so a crashed run's leftovers are recognised and removed at the next start.
const (
	BridgeName      = "rlab0"
	netnsPrefix     = "rlab-"
	hostVethPrefix  = "rlv"
	podNetworkCIDR  = "198.18.0.0/15"
	gatewayAddress  = "198.18.0.1"
	podPrefixLength = 15
)

// Network gives each Pod its own address and a way to run processes there.
type Network interface {
	// Setup makes the Pod's network and returns its IP.
	Setup(podKey string) (net.IP, error)
	// Command wraps argv so it runs in the Pod's network.
	Command(podKey string, argv []string) (*exec.Cmd, error)
	// Teardown removes the Pod's network.
	Teardown(podKey string) error
	// Close removes everything the network made.
	Close() error
}

// NetnsNetwork is the root-only Network: real namespaces, any unmodified app binding 0.0.0.0:PORT runs.
type NetnsNetwork struct {
	mu     sync.Mutex
	next   uint32 // next host number in the range
	pods   map[string]podNet
	closed bool
}

type podNet struct {
	ns   string
	veth string
	ip   net.IP
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

// NewNetnsNetwork removes a previous run's leftovers, then creates the bridge.
func NewNetnsNetwork() (*NetnsNetwork, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the lab's Pod network needs root (network namespaces and a bridge); run as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("the lab's Pod network needs the ip command (Debian package iproute2): %w", err)
	}
	if err := CleanStaleNetwork(); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "add", BridgeName, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", gatewayAddress, podPrefixLength), "dev", BridgeName},
		{"link", "set", BridgeName, "up"},
	} {
		if err := ipCommand(args...); err != nil {
			_ = ipCommand("link", "del", BridgeName)
			return nil, err
		}
	}
	return &NetnsNetwork{next: 2, pods: map[string]podNet{}}, nil
}

// CleanStaleNetwork removes the namespaces and bridge a previous lab left (after a crash, say).
func CleanStaleNetwork() error {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return fmt.Errorf("ip netns list: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if strings.HasPrefix(name, netnsPrefix) {
			// Processes of a crashed lab may still run in it; deleting the namespace would not stop them.
			if pids, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
				for _, field := range strings.Fields(string(pids)) {
					if pid, err := strconv.Atoi(field); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			if err := ipCommand("netns", "del", name); err != nil {
				return err
			}
		}
	}
	if _, err := net.InterfaceByName(BridgeName); err == nil {
		return ipCommand("link", "del", BridgeName)
	}
	return nil
}

func hostIP(n uint32) net.IP {
	base := net.ParseIP("198.18.0.0").To4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += n
	return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// Setup creates the Pod's namespace, its veth pair on the bridge, its address and default route.
func (n *NetnsNetwork) Setup(podKey string) (net.IP, error) {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil, fmt.Errorf("pod network closed")
	}
	id := n.next
	n.next++
	n.mu.Unlock()
	if id >= 1<<17-1 {
		return nil, fmt.Errorf("pod network %s is exhausted", podNetworkCIDR)
	}
	p := podNet{ns: fmt.Sprintf("%s%d", netnsPrefix, id), veth: fmt.Sprintf("%s%d", hostVethPrefix, id), ip: hostIP(id)}
	steps := [][]string{
		{"netns", "add", p.ns},
		{"link", "add", p.veth, "type", "veth", "peer", "name", "eth0", "netns", p.ns},
		{"link", "set", p.veth, "master", BridgeName, "up"},
		{"-n", p.ns, "addr", "add", fmt.Sprintf("%s/%d", p.ip, podPrefixLength), "dev", "eth0"},
		{"-n", p.ns, "link", "set", "eth0", "up"},
		{"-n", p.ns, "link", "set", "lo", "up"},
		{"-n", p.ns, "route", "add", "default", "via", gatewayAddress},
	}
	for _, args := range steps {
		if err := ipCommand(args...); err != nil {
			_ = ipCommand("netns", "del", p.ns)
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
	return ipCommand("netns", "del", p.ns)
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
	if err := ipCommand("link", "del", BridgeName); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("pod network cleanup: %v", errs)
	}
	return nil
}
