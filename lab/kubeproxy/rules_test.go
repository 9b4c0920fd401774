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
	iptables := `table ip nat {
	chain KUBE-SVC-ABC {
		meta l4proto tcp ip saddr != 198.19.240.0/20 ip daddr 10.96.0.10 tcp dport 80 counter jump KUBE-MARK-MASQ
		# xt_statistic counter jump KUBE-SEP-ONE
		counter jump KUBE-SEP-TWO
	}
	chain KUBE-SEP-ONE {
		meta l4proto tcp counter dnat to 198.19.240.3:8080
	}
	chain KUBE-SEP-TWO {
		meta l4proto tcp counter dnat to 198.19.241.4:8080
	}
}`
	got = routedAddresses([]byte(iptables))
	want = map[string]bool{"198.19.240.3": true, "198.19.241.4": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("iptables mode: got %v, want %v", got, want)
	}
}
