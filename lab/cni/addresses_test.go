package cni

import (
	"testing"
	"time"
)

func TestAddressPoolReusesFreedAddressesOnlyAfterQuarantine(t *testing.T) {
	now := time.Unix(1000, 0)
	p := newAddressPool(2, 4, time.Minute)
	p.now = func() time.Time { return now }
	var got []uint32
	for range 3 {
		host, err := p.take()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, host)
	}
	if got[0] != 2 || got[1] != 3 || got[2] != 4 {
		t.Fatalf("first addresses %v, want 2 3 4", got)
	}
	if _, err := p.take(); err == nil {
		t.Fatal("a full pool handed out an address")
	}
	p.release(3)
	now = now.Add(10 * time.Second)
	p.release(2)
	if _, err := p.take(); err == nil {
		t.Fatal("a freed address was reused within its quarantine")
	}
	now = now.Add(50 * time.Second) // 3 was freed 60 s ago, 2 only 50 s ago
	if host, err := p.take(); err != nil || host != 3 {
		t.Fatalf("after the quarantine: %d, %v; want 3 (freed first)", host, err)
	}
	if _, err := p.take(); err == nil {
		t.Fatal("2 was reused before its own quarantine ended")
	}
	now = now.Add(10 * time.Second)
	if host, err := p.take(); err != nil || host != 2 {
		t.Fatalf("got %d, %v; want 2", host, err)
	}
}
