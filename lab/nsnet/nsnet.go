// Package nsnet makes sockets inside a named network namespace from a process that lives in another: a socket
// keeps the namespace it was created in, so the thread that creates it enters the namespace for the syscall alone
// and returns at once. The lab's in-process parts that play other hosts (the cloud's load balancer, a node's
// health and conntrack probes) use it to own their sockets, ports and TIME_WAIT states apart from the host's.
package nsnet

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// in runs make with the calling thread in namespace ns ("" runs it where the process is).
func in[T any](ns string, make func() (T, error)) (T, error) {
	var zero T
	if ns == "" {
		return make()
	}
	handle, err := netns.GetFromName(ns)
	if err != nil {
		return zero, fmt.Errorf("network namespace %s: %w", ns, err)
	}
	defer handle.Close()
	runtime.LockOSThread()
	current, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return zero, err
	}
	defer current.Close()
	if err := netns.Set(handle); err != nil {
		runtime.UnlockOSThread()
		return zero, fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	v, makeErr := make()
	if err := netns.Set(current); err != nil {
		// A thread left in another namespace must never run other goroutines: it stays locked, so it exits with
		// this goroutine.
		if c, ok := any(v).(interface{ Close() error }); ok && makeErr == nil {
			_ = c.Close()
		}
		return zero, fmt.Errorf("return from network namespace %s: %w", ns, err)
	}
	runtime.UnlockOSThread()
	return v, makeErr
}

// Listen listens on address inside namespace ns ("" for the process's own).
func Listen(ns, network, address string) (net.Listener, error) {
	return in(ns, func() (net.Listener, error) { return net.Listen(network, address) })
}

// Dial connects from inside namespace ns ("" for the process's own) with dialer. The socket is made (and the
// dialer's Control run) on the thread in the namespace; the connect then waits as any other.
func Dial(ctx context.Context, ns string, dialer *net.Dialer, network, address string) (net.Conn, error) {
	return in(ns, func() (net.Conn, error) { return dialer.DialContext(ctx, network, address) })
}
