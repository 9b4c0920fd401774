package timeline

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestPodsGaugeFollowsTheLifecycle(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	pods := func(state string) float64 { return testutil.ToFloat64(m.Pods.WithLabelValues("ns", state)) }
	step := func(uid, event string) { m.observe(Event{Type: event, Namespace: "ns", UID: uid}) }
	for _, uid := range []string{"a", "b"} {
		step(uid, EventPodCreated)
		step(uid, EventContainerStart)
	}
	step("a", EventPodReady)
	if pods("starting") != 1 || pods("ready") != 1 {
		t.Fatalf("starting %v ready %v, want 1 and 1", pods("starting"), pods("ready"))
	}
	step("b", EventPodReady)
	step("a", EventDeletionSeen)
	step("a", EventPodNotReady) // a terminating Pod's readiness failing keeps it terminating
	step("a", EventSIGTERM)
	if pods("ready") != 1 || pods("terminating") != 1 || pods("not_ready") != 0 || pods("starting") != 0 {
		t.Fatalf("ready %v terminating %v not_ready %v starting %v", pods("ready"), pods("terminating"), pods("not_ready"), pods("starting"))
	}
	step("a", EventPodRemoved)
	step("a", EventPodRemoved) // twice: counted once
	if pods("terminating") != 0 || pods("ready") != 1 {
		t.Errorf("after removal: terminating %v ready %v", pods("terminating"), pods("ready"))
	}
}
