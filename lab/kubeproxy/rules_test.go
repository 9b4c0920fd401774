package kubeproxy

import (
	"reflect"
	"testing"
)

// The addresses a node's Service chains send new connections to, as kube-proxy v1.37 writes them in each mode.
func TestRoutedAddressesReadBothModes(t *testing.T) {
	nftables := `table ip kube-proxy {
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
	got := routedAddresses([]byte(nftables))
	want := map[string]bool{"198.19.240.2": true, "198.19.241.2": true, "198.19.242.7": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("nftables mode: got %v, want %v (an endpoint chain no Service chain reaches is not routed)", got, want)
	}
	// iptables-save -t nat of kube-proxy v1.37's iptables mode (iptables-nft 1.8.9), trimmed.
	iptables := `*nat
:KUBE-EXT-LOLE4ISW44XBNF3G - [0:0]
:KUBE-SEP-JPEHC7QIBNRN22OZ - [0:0]
:KUBE-SEP-XPWQ4VWYDTSZ6AIP - [0:0]
:KUBE-SEP-GONE000000000000 - [0:0]
:KUBE-SVC-LOLE4ISW44XBNF3G - [0:0]
-A KUBE-EXT-LOLE4ISW44XBNF3G -m comment --comment "masquerade traffic for default/web external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-LOLE4ISW44XBNF3G -j KUBE-SVC-LOLE4ISW44XBNF3G
-A KUBE-SEP-JPEHC7QIBNRN22OZ -s 198.18.16.3/32 -m comment --comment "default/web" -j KUBE-MARK-MASQ
-A KUBE-SEP-JPEHC7QIBNRN22OZ -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 198.18.16.3:8080
-A KUBE-SEP-XPWQ4VWYDTSZ6AIP -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 198.18.16.2:8080
-A KUBE-SEP-GONE000000000000 -p tcp -m comment --comment "default/web" -m tcp -j DNAT --to-destination 198.18.16.9:8080
-A KUBE-SVC-LOLE4ISW44XBNF3G -m comment --comment "default/web -> 198.18.16.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-XPWQ4VWYDTSZ6AIP
-A KUBE-SVC-LOLE4ISW44XBNF3G -m comment --comment "default/web -> 198.18.16.3:8080" -j KUBE-SEP-JPEHC7QIBNRN22OZ
COMMIT
`
	got = routedAddressesIPTables([]byte(iptables))
	want = map[string]bool{"198.18.16.2": true, "198.18.16.3": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("iptables mode: got %v, want %v", got, want)
	}
}
