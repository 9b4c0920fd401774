package nsnet

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/vishvananda/netns"
)

// A listener made in a namespace is reached from that namespace only — its 127.0.0.1 is not the host's — and the
// thread that made it comes back to the process's own namespace.
func TestSocketsStayInTheirNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	ns := fmt.Sprintf("nsnet-test-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()

	ln, err := Listen(ns, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if after, err := netns.Get(); err != nil || !after.Equal(before) {
		t.Fatalf("the thread stayed in the namespace after Listen (err %v)", err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("in"))
			c.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := Dial(ctx, ns, &net.Dialer{}, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial inside the namespace: %v", err)
	}
	buf := make([]byte, 2)
	if _, err := conn.Read(buf); err != nil || string(buf) != "in" {
		t.Fatalf("read %q, %v; want the listener's answer", buf, err)
	}
	conn.Close()
	if after, err := netns.Get(); err != nil || !after.Equal(before) {
		t.Fatalf("the thread stayed in the namespace after Dial (err %v)", err)
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Fatalf("the host's 127.0.0.1 reached a listener of namespace %s", ns)
	}
	if _, err := Listen("nsnet-test-no-such-namespace", "tcp", "127.0.0.1:0"); err == nil {
		t.Fatal("Listen in a missing namespace succeeded")
	}
}
