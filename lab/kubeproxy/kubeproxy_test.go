package kubeproxy

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// A node's proxy whose queue is full must not stall the dataplane: routing and the forwards still answer, and Stop
// returns (the change used to be queued while holding the lock the proxy needs to apply it).
func TestFullProxyQueueDoesNotDeadlock(t *testing.T) {
	client := fake.NewClientset()
	// Every change waits a minute before it lands, so the one-slot queues fill at once.
	d, err := startDataplane(client, []string{"n1", "n2"}, "", ServiceOutModel{Min: time.Minute, Max: time.Minute}, nil, slog.New(slog.DiscardHandler), 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range 6 {
		slice := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("web-%d", i), Namespace: "ns"}, AddressType: discoveryv1.AddressTypeIPv4}
		if _, err := client.DiscoveryV1().EndpointSlices("ns").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The watch is now blocked on a full queue (one change applying, one queued, the third waiting).
	time.Sleep(300 * time.Millisecond)
	answered := make(chan struct{})
	go func() {
		d.Forwards()
		_, _, _ = d.Route("web.ns:80")
		close(answered)
	}()
	select {
	case <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("the dataplane's lock is held while a proxy queue is full")
	}
	stopped := make(chan struct{})
	go func() {
		d.Stop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop hangs while a proxy queue is full")
	}
}
