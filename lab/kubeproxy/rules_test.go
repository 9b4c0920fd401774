package kubeproxy

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
)

// The addresses a node's Service chains send new connections to, as kube-proxy v1.37 writes them in each mode:
// nftables mode's read from the kernel over netlink (the ruleset loaded into a namespace of its own), iptables
// mode's the same way from the chains its Services' names give (loaded with iptables-restore, iptables-nft). Chains
// of namespaces left out (a lab's background), or of Services not asked for, are not read.
func TestRoutedAddressesReadBothModes(t *testing.T) {
	testenv.RequireRoot(t)
	nftables := `table ip kube-proxy {
	chain mark-for-masquerade {
		meta mark set meta mark | 0x00004000
	}
	chain service-BGBGBGBG-lab-background/bg-00001/tcp/http {
		meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : 198.19.99.1 . 8080 }
	}
	chain service-PFISGYVC-default/web/tcp/ {
		ip daddr 10.96.192.144 tcp dport 80 ip saddr != 198.19.240.0/20 jump mark-for-masquerade
		meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 198.19.240.2 . 8080, 1 : 198.19.241.2 . 8080 }
	}
	chain external-PFISGYVC-default/web/tcp/ {
		jump mark-for-masquerade
		goto service-PFISGYVC-default/web/tcp/
	}
	chain service-AFFINITY-default/sticky/tcp/ {
		meta l4proto tcp numgen random mod 1 vmap { 0 : goto endpoint-XYZ-default/sticky/tcp/__198.19.242.7/8080 }
	}
	chain endpoint-XYZ-default/sticky/tcp/__198.19.242.7/8080 {
		meta l4proto tcp dnat to 198.19.242.7:8080
	}
	chain endpoint-GONE-default/web/tcp/__198.19.240.9/8080 {
		meta l4proto tcp dnat to 198.19.240.9:8080
	}
}`
	ns := fmt.Sprintf("rlab-test-rules-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	load := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	load.Stdin = strings.NewReader(nftables)
	if out, err := load.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	got, err := routedNFTables(ns, []string{"lab-background"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"198.19.240.2": true, "198.19.241.2": true, "198.19.242.7": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("nftables mode: got %v, want %v (an endpoint chain no Service chain reaches is not routed, the background is not read)", got, want)
	}
	// iptables-save -t nat of kube-proxy v1.37's iptables mode (iptables-nft 1.8.9), trimmed; KUBE-SVC-OTHER… is
	// another Service's, not asked for.
	iptables := `*nat
:KUBE-MARK-MASQ - [0:0]
:KUBE-EXT-LOLE4ISW44XBNF3G - [0:0]
:KUBE-SEP-JPEHC7QIBNRN22OZ - [0:0]
:KUBE-SEP-XPWQ4VWYDTSZ6AIP - [0:0]
:KUBE-SEP-GONE000000000000 - [0:0]
:KUBE-SEP-OTHER00000000000 - [0:0]
:KUBE-SVC-LOLE4ISW44XBNF3G - [0:0]
:KUBE-SVC-OTHER00000000000 - [0:0]
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-EXT-LOLE4ISW44XBNF3G -m comment --comment "masquerade traffic for default/web external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-LOLE4ISW44XBNF3G -j KUBE-SVC-LOLE4ISW44XBNF3G
-A KUBE-SEP-JPEHC7QIBNRN22OZ -s 198.18.16.3/32 -m comment --comment "default/web" -j KUBE-MARK-MASQ
-A KUBE-SEP-JPEHC7QIBNRN22OZ -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 198.18.16.3:8080
-A KUBE-SEP-XPWQ4VWYDTSZ6AIP -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 198.18.16.2:8080
-A KUBE-SEP-GONE000000000000 -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 198.18.16.9:8080
-A KUBE-SEP-OTHER00000000000 -p tcp -m comment --comment "lab-background/bg-00001:http" -m tcp -j DNAT --to-destination 198.18.16.7:8080
-A KUBE-SVC-LOLE4ISW44XBNF3G -m comment --comment "default/web -> 198.18.16.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-XPWQ4VWYDTSZ6AIP
-A KUBE-SVC-LOLE4ISW44XBNF3G -m comment --comment "default/web -> 198.18.16.3:8080" -j KUBE-SEP-JPEHC7QIBNRN22OZ
-A KUBE-SVC-OTHER00000000000 -m comment --comment "lab-background/bg-00001:http -> 198.18.16.7:8080" -j KUBE-SEP-OTHER00000000000
COMMIT
`
	restore := exec.Command("ip", "netns", "exec", ns, "iptables-restore")
	restore.Stdin = strings.NewReader(iptables)
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore: %v: %s", err, out)
	}
	// kube-proxy named default/web's chains from its name: the watch computes the same names.
	chains := iptablesServiceChains("default/web", "TCP")
	if chains[0] != "KUBE-SVC-LOLE4ISW44XBNF3G" {
		t.Fatalf("chains of default/web: %v, want KUBE-SVC-LOLE4ISW44XBNF3G as kube-proxy named it", chains)
	}
	got, err = routedIPTables(ns, append(chains, iptablesServiceChains("default/gone", "TCP")...))
	if err != nil {
		t.Fatal(err)
	}
	want = map[string]bool{"198.18.16.2": true, "198.18.16.3": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("iptables mode: got %v, want %v (only the Services asked for; chains not there are skipped)", got, want)
	}
}

// Older iptables-nft write "-j DNAT --to-destination" as the xtables target, in each of its revisions.
func TestXTablesDNATTargetsGiveTheirAddress(t *testing.T) {
	ip := net.IPv4(198, 18, 16, 3)
	for _, target := range []*expr.Target{
		{Name: "DNAT", Rev: 0, Info: &xt.NatIPv4MultiRangeCompat{{Flags: 1, MinIP: ip, MaxIP: ip}}},
		{Name: "DNAT", Rev: 1, Info: &xt.NatRange{Flags: 1, MinIP: ip, MaxIP: ip, MinPort: 8080, MaxPort: 8080}},
		{Name: "DNAT", Rev: 2, Info: &xt.NatRange2{NatRange: xt.NatRange{Flags: 1, MinIP: ip, MaxIP: ip, MinPort: 8080, MaxPort: 8080}}},
	} {
		if got := xtDNATAddress([]expr.Any{&expr.Counter{}, target}); got != "198.18.16.3" {
			t.Errorf("revision %d: %q, want 198.18.16.3", target.Rev, got)
		}
	}
	masquerade := &expr.Target{Name: "MASQUERADE", Info: &xt.NatIPv4MultiRangeCompat{{MinIP: ip}}}
	if got := xtDNATAddress([]expr.Any{masquerade}); got != "" {
		t.Errorf("a MASQUERADE target gave %q", got)
	}
}
