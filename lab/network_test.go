package lab

import (
	"fmt"
	"testing"
)

// A long sweep creates and deletes far more Pods than a lab's block has addresses: freed ones come back.
func TestPodAddressesAreFreedOnTeardown(t *testing.T) {
	requireRoot(t)
	n, err := NewNetnsNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// Three addresses, no quarantine: ten Pods one after another must all get one.
	n.hosts = newAddressPool(2, 4, 0)
	seen := map[string]int{}
	for i := range 10 {
		key := fmt.Sprintf("ns/pod-%d", i)
		ip, err := n.Setup(key)
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
		if _, err := n.Setup(fmt.Sprintf("ns/held-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n.Setup("ns/one-too-many"); err == nil {
		t.Error("a fourth Pod got an address from a block of three")
	}
}
