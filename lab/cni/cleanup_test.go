package cni

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab/owner"
)

// Leftovers of a lab whose process died (a namespace with a process in it, the bridge) go at the next start;
// those of a lab still running stay, and so do names like a lab's that no lab of this project marked.
func TestStaleNetworkOfDeadLabsIsRemoved(t *testing.T) {
	testenv.RequireRoot(t)
	self, err := owner.Self()
	if err != nil {
		t.Fatal(err)
	}
	boot := self.BootID
	dead := 4194300 // above any pid this machine hands out
	if err := owner.WriteMarker(owner.Owner{PID: dead, Start: 1, BootID: boot}); err != nil {
		t.Fatal(err)
	}
	// A live process whose PID a dead lab once had: the marker's start time is not its own.
	reused := exec.Command("sleep", "300")
	if err := reused.Start(); err != nil {
		t.Fatal(err)
	}
	defer reused.Process.Kill()
	reusedOwner, err := owner.Of(reused.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	reusedOwner.Start--
	if err := owner.WriteMarker(reusedOwner); err != nil {
		t.Fatal(err)
	}
	unmarked := 4194299
	ns := fmt.Sprintf("%s%d-1", netnsPrefix, dead)
	reusedNS := fmt.Sprintf("%s%d-1", netnsPrefix, reused.Process.Pid)
	unmarkedNS := fmt.Sprintf("%s%d-1", netnsPrefix, unmarked)
	for _, name := range []string{ns, reusedNS, unmarkedNS} {
		if err := ipCommand("netns", "add", name); err != nil {
			t.Fatal(err)
		}
	}
	defer ipCommand("netns", "del", unmarkedNS)
	if err := ipCommand("link", "add", BridgeName(dead), "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	if err := ipCommand("link", "add", BridgeName(unmarked), "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	defer ipCommand("link", "del", BridgeName(unmarked))
	sleeper := exec.Command("ip", "netns", "exec", ns, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	// What was removed is told (runner lab down prints it); only what dead labs of this project marked.
	cleaned, err := CleanStale()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(cleaned.Namespaces, ns) || !slices.Contains(cleaned.Namespaces, reusedNS) || slices.Contains(cleaned.Namespaces, unmarkedNS) ||
		cleaned.Processes < 1 || !slices.Contains(cleaned.Links, BridgeName(dead)) || slices.Contains(cleaned.Links, BridgeName(unmarked)) {
		t.Errorf("cleaned %+v", cleaned)
	}
	n, err := NewNetnsNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if left, _ := Namespaces(dead); len(left) > 0 {
		t.Errorf("stale namespaces left: %v", left)
	}
	if left, _ := Namespaces(reused.Process.Pid); len(left) > 0 {
		t.Errorf("namespaces of a dead lab whose PID was reused left: %v", left)
	}
	if _, err := net.InterfaceByName(BridgeName(dead)); err == nil {
		t.Errorf("stale bridge %s left", BridgeName(dead))
	}
	if _, ok := owner.ReadMarker(dead); ok {
		t.Error("the dead lab's marker is left")
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("the process in the stale namespace still runs")
	}
	if err := syscall.Kill(reused.Process.Pid, 0); err != nil {
		t.Errorf("the process that reused a dead lab's PID was touched: %v", err)
	}
	if left, _ := Namespaces(unmarked); len(left) != 1 {
		t.Errorf("an unmarked namespace named like a lab's was removed: %v", left)
	}
	if _, err := net.InterfaceByName(BridgeName(unmarked)); err != nil {
		t.Errorf("an unmarked bridge named like a lab's was removed: %v", err)
	}
	if _, err := net.InterfaceByName(n.Bridge); err != nil {
		t.Errorf("this lab's bridge: %v", err)
	}
	if o, ok := owner.ReadMarker(os.Getpid()); !ok || !o.Alive() {
		t.Errorf("this lab's marker: %+v %v", o, ok)
	}
}
