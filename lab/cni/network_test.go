package cni

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
)

// A long sweep creates and deletes far more Pods than a lab's block has addresses: freed ones come back.
func TestPodAddressesAreFreedOnTeardown(t *testing.T) {
	testenv.RequireRoot(t)
	n, err := NewNetnsNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// Three addresses, no quarantine: ten Pods one after another must all get one.
	n.newPool = func() *addressPool { return newAddressPool(2, 4, 0) }
	addTestNode(t, n, "n1", 0)
	seen := map[string]int{}
	for i := range 10 {
		key := fmt.Sprintf("ns/pod-%d", i)
		ip, err := n.Setup(key, "n1")
		if err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
		seen[ip.String()]++
		if err := n.Teardown(key); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != 3 {
		t.Errorf("addresses used: %v, want the block's 3 in turn", seen)
	}
	// With every address taken and none freed, the error says why.
	for i := range 3 {
		if _, err := n.Setup(fmt.Sprintf("ns/held-%d", i), "n1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Setup("ns/one-too-many", "n1"); err == nil {
		t.Error("a fourth Pod got an address from a block of three")
	}
}

// A Pod's removal leaves the gateway's address, and every other Pod's established connections, as they were. An
// unpinned bridge takes the lowest address of its ports and changes it when that port goes; the other Pods then
// send their replies to the old address, lost, until the host happens to ask them again (an ARP answer younger than
// the neighbour lock time is ignored) or their entry expires (15–45 s): requests in flight hang, and a Pod's exit
// reaches nobody — seen as 5 s timeouts in the end-to-end test before the bridge was pinned.
func TestEstablishedConnectionsSurviveAnotherPodsRemoval(t *testing.T) {
	testenv.RequireRoot(t)
	n, err := NewNetnsNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	node := addTestNode(t, n, "n1", 0)
	if _, err := n.Setup("ns/leaving", "n1"); err != nil {
		t.Fatal(err)
	}
	serverIP, err := n.Setup("ns/serving", "n1")
	if err != nil {
		t.Fatal(err)
	}
	// The leaving Pod's port gets the lowest address there is, which an unpinned bridge would adopt.
	leaving := n.pods["ns/leaving"]
	if err := ipCommand("-n", node.ns, "link", "set", leaving.veth, "address", "02:00:00:00:00:01"); err != nil {
		t.Fatal(err)
	}
	bridgeBefore := bridgeAddress(t, node.ns)
	server, err := n.Command("ns/serving", []string{cowwebBinary, "serve", "--port=8080"})
	if err != nil {
		t.Fatal(err)
	}
	server.Stdout, server.Stderr = os.Stderr, os.Stderr
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = server.Process.Kill(); _ = server.Wait() }()

	addr := net.JoinHostPort(serverIP.String(), "8080")
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if conn, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cowweb in the Pod never listened: %v", err)
		}
	}
	defer conn.Close()
	reader := bufio.NewReader(conn)
	ask := func(when string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := fmt.Fprintf(conn, "GET /health HTTP/1.1\r\nHost: %s\r\n\r\n", addr); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		resp, err := http.ReadResponse(reader, nil)
		if err != nil {
			t.Fatalf("%s: no answer on the established connection: %v", when, err)
		}
		_, _ = reader.Discard(int(max(resp.ContentLength, 0)))
		resp.Body.Close()
	}
	// The serving Pod's entry for the gateway must be confirmed (REACHABLE), as on a connection carrying load:
	// only then does the Pod keep using it without asking again.
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ask("before the other Pod's removal")
		out, err := exec.Command("ip", "-n", n.pods["ns/serving"].ns, "neigh", "show", node.gateway.String()).CombinedOutput()
		if err != nil {
			t.Fatalf("ip neigh: %v: %s", err, out)
		}
		if strings.Contains(string(out), "REACHABLE") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the serving Pod never confirmed the gateway: %s", out)
		}
	}
	if err := n.Teardown("ns/leaving"); err != nil {
		t.Fatal(err)
	}
	if bridgeAfter := bridgeAddress(t, node.ns); bridgeBefore != bridgeAfter {
		t.Errorf("the node's bridge changed its address from %s to %s when a Pod left", bridgeBefore, bridgeAfter)
	}
	ask("after the other Pod's removal")
}

// addTestNode adds node number index with the index'th Pod CIDR of the cluster CIDR.
func addTestNode(t *testing.T, n *NetnsNetwork, name string, index int) *nodeNet {
	t.Helper()
	_, cluster, err := net.ParseCIDR(n.ClusterCIDR())
	if err != nil {
		t.Fatal(err)
	}
	cidr := fmt.Sprintf("%s/%d", ipv4(ipValue(cluster.IP)+uint32(index)<<(32-NodeCIDRMaskSize)), NodeCIDRMaskSize)
	if _, err := n.AddNode(name, cidr); err != nil {
		t.Fatal(err)
	}
	return n.nodes[name]
}

// bridgeAddress is the hardware address of the node's Pod bridge.
func bridgeAddress(t *testing.T, ns string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show", nodeBridge).Output()
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(out))
	for i, f := range fields {
		if f == "link/ether" && i+1 < len(fields) {
			return strings.ToLower(fields[i+1])
		}
	}
	t.Fatalf("no address: %s", out)
	return ""
}

var cowwebBinary string

func TestMain(m *testing.M) { os.Exit(testenv.MainWithCowweb(m, &cowwebBinary)) }

// A LoadBalancer Service may ask for its address, as a cloud's reserved static address: the lab gives that one
// when it is one of its load balancer addresses and free, and says why not otherwise.
func TestLoadBalancerAddressesAsAskedFor(t *testing.T) {
	testenv.RequireRoot(t)
	n, err := NewNetnsNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	first, err := n.AllocateExternal(nil)
	if err != nil {
		t.Fatal(err)
	}
	next := ipv4(ipValue(first) + 1)
	got, err := n.AllocateExternal(next)
	if err != nil || !got.Equal(next) {
		t.Fatalf("asked for %s: got %s, %v", next, got, err)
	}
	if _, err := n.AllocateExternal(next); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("asked twice for %s: %v", next, err)
	}
	if _, err := n.AllocateExternal(net.IPv4(192, 0, 2, 1)); err == nil || !strings.Contains(err.Error(), "not one of the lab's load balancer addresses") {
		t.Errorf("asked for an address outside the lab: %v", err)
	}
	// Taken back, it can be asked for again; the address is on the balancer's host while held.
	if err := n.ReleaseExternal(next); err != nil {
		t.Fatal(err)
	}
	if got, err := n.AllocateExternal(next); err != nil || !got.Equal(next) {
		t.Errorf("asked again for %s after its release: %s, %v", next, got, err)
	}
	out, err := exec.Command("ip", "-n", n.BalancerNamespace(), "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " "+next.String()+"/32") {
		t.Errorf("balancer's eth0 (%v):\n%s", err, out)
	}
}
