package attribution

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

func TestAttributeByEndpointAndTime(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	zero, killed := 0, 143
	events := []timeline.Event{
		{Type: timeline.EventDeletionSeen, PodIP: "198.18.0.2", Time: at(0)},
		{Type: timeline.EventSIGTERM, PodIP: "198.18.0.2", Time: at(10)},
		{Type: timeline.EventServiceOut, PodIP: "198.18.0.2", Node: "lab-node-1", Time: at(700)},
		{Type: timeline.EventContainerExited, PodIP: "198.18.0.2", Time: at(20), ExitCode: &zero},
		{Type: timeline.EventSIGTERM, PodIP: "198.18.0.3", Time: at(8000)},
		{Type: timeline.EventContainerExited, PodIP: "198.18.0.3", Time: at(8005), ExitCode: &killed},
	}
	failures := []load.Outcome{
		{Class: load.ClassRefused, Endpoint: "198.18.0.2:8080", Sent: at(300)},                                   // after SIGTERM, before service-out
		{Class: load.ClassRefused, Endpoint: "198.18.0.9:8080", Sent: at(300)},                                   // a Pod never terminated
		{Class: load.ClassReset, Endpoint: "198.18.0.3:8080", Sent: at(7990), Latency: 20 * time.Millisecond},    // running at the immediate exit
		{Class: load.ClassEOF, Endpoint: "198.18.0.2:8080", Sent: at(15), Latency: 10 * time.Millisecond},        // graceful exit: not a cut, but sent after SIGTERM
		{Class: load.ClassEOF, Endpoint: "198.18.0.3:8080", Sent: at(50), Latency: 10 * time.Millisecond},        // long before that Pod's SIGTERM
		{Class: load.ClassHTTP5xx, Endpoint: "198.18.0.3:8080", Sent: at(7900), Latency: 200 * time.Millisecond}, // a balancer's 502 for a cut
		{Class: load.ClassTimeout, Endpoint: "", Sent: at(100)},
		{Class: load.ClassTimeout, Endpoint: "198.18.0.2:8080", Sent: at(500)}, // the Pod's address already gone
		{Class: load.ClassOther, Endpoint: "198.18.0.3:8080", Sent: at(100)},   // before that Pod's SIGTERM
	}
	attribution := attribute(failures, events)
	got := attribution.ByCause()
	want := map[string]uint64{CauseBeforeServiceOut: 3, CauseInFlightCut: 2, CauseOther: 4}
	for phase, n := range want {
		if got[phase] != n {
			t.Errorf("%s: %d, want %d (all: %v)", phase, got[phase], n, got)
		}
	}
	if n := attribution[CauseBeforeServiceOut]; n[load.ClassRefused] != 1 || n[load.ClassTimeout] != 1 {
		t.Errorf("before-service-out by class: %v", n)
	}
	if n := attribution[CauseInFlightCut]; n[load.ClassReset] != 1 || n[load.ClassHTTP5xx] != 1 {
		t.Errorf("in-flight-cut by class: %v", n)
	}
}

// feedFailures sends n failed requests at 1000/s of simulated time to an attributor whose clock follows them.
func feedFailures(a *Attributor, n int) {
	t0 := time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC)
	now := t0
	a.now = func() time.Time { return now }
	a.Event(timeline.Event{Type: timeline.EventSIGTERM, PodIP: "198.18.0.2", Time: t0.Add(time.Hour)})
	for i := range n {
		now = t0.Add(time.Duration(i) * time.Millisecond)
		a.Outcome(load.Outcome{Seq: uint64(i), Sent: now.Add(-time.Millisecond), Latency: time.Millisecond, Class: load.ClassRefused,
			Endpoint: fmt.Sprintf("198.18.0.%d:8080", 2+i%200)})
	}
}

// heapOf is how much live heap what f builds holds.
func heapOf(f func() *Attributor) (uint64, *Attributor) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	a := f()
	runtime.GC()
	runtime.ReadMemStats(&after)
	return after.HeapAlloc - min(before.HeapAlloc, after.HeapAlloc), a
}

// A dead target at a high rate fails every request: what the attribution holds must not grow with their number.
func TestAttributorMemoryDoesNotGrowWithFailures(t *testing.T) {
	small, a1 := heapOf(func() *Attributor {
		a := NewAttributor(SettleTime, FailureSampleLimit)
		feedFailures(a, 100_000)
		return a
	})
	large, a2 := heapOf(func() *Attributor {
		a := NewAttributor(SettleTime, FailureSampleLimit)
		feedFailures(a, 1_000_000)
		return a
	})
	t.Logf("heap with 100k failures %d KiB, with 1M %d KiB", small>>10, large>>10)
	if float64(large) > 1.2*float64(small) {
		t.Errorf("10× more failures took %.2f× the heap", float64(large)/float64(small))
	}
	for _, tc := range []struct {
		a *Attributor
		n uint64
	}{{a1, 100_000}, {a2, 1_000_000}} {
		got := tc.a.Finish()
		counts, sample := got.ByClass, got.Failures
		var total uint64
		for _, classes := range counts {
			for _, n := range classes {
				total += n
			}
		}
		if total != tc.n || counts[CauseOther][load.ClassRefused] != tc.n {
			t.Errorf("%d failures attributed as %v", tc.n, counts)
		}
		if len(sample.Kept) != FailureSampleLimit || sample.Dropped != tc.n-FailureSampleLimit {
			t.Errorf("sample: kept %d dropped %d", len(sample.Kept), sample.Dropped)
		}
	}
}

// Failures decided as they arrive, against the timeline recorded so far, match the post-run attribution.
func TestAttributorDecidesWithTheTimelineAsRecorded(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC)
	now := t0
	a := NewAttributor(SettleTime, 2)
	a.now = func() time.Time { return now }
	killed := 143
	// Refused after SIGTERM: SIGTERM is recorded before the failure arrives.
	a.Event(timeline.Event{Type: timeline.EventSIGTERM, PodIP: "198.18.0.2", UID: "uid-2", Time: t0})
	now = t0.Add(300 * time.Millisecond)
	a.Outcome(load.Outcome{Class: load.ClassRefused, Endpoint: "198.18.0.2:8080", Pod: "uid-2", Node: "lab-node-1", Sent: t0.Add(200 * time.Millisecond)})
	// A cut whose exit event arrives 2 s after the failure: it waits for it.
	a.Event(timeline.Event{Type: timeline.EventSIGTERM, PodIP: "198.18.0.3", Time: t0})
	a.Outcome(load.Outcome{Class: load.ClassReset, Endpoint: "198.18.0.3:8080", Sent: t0.Add(100 * time.Millisecond), Latency: 200 * time.Millisecond})
	now = t0.Add(2300 * time.Millisecond)
	a.Event(timeline.Event{Type: timeline.EventContainerExited, PodIP: "198.18.0.3", Time: t0.Add(290 * time.Millisecond), ExitCode: &killed})
	// Later failures push the clock past the settle time; the held ones are then decided.
	now = t0.Add(30 * time.Second)
	a.Outcome(load.Outcome{Class: load.ClassTimeout, Sent: now})
	got := a.Finish()
	counts, sample := got.ByClass, got.Failures
	if counts[CauseBeforeServiceOut][load.ClassRefused] != 1 || counts[CauseInFlightCut][load.ClassReset] != 1 ||
		counts[CauseOther][load.ClassTimeout] != 1 {
		t.Errorf("attribution %v", counts)
	}
	if len(sample.Kept) != 2 || sample.Dropped != 1 || sample.Kept[0].Cause != CauseBeforeServiceOut || sample.Kept[1].Cause != CauseInFlightCut {
		t.Errorf("sample %+v", sample)
	}
	// Each kept failure names the Pod its connection reached and the node whose proxy routed it.
	if k := sample.Kept[0]; k.Pod != "uid-2" || k.Node != "lab-node-1" || k.Endpoint != "198.18.0.2:8080" {
		t.Errorf("kept failure %+v", k)
	}
}

// Addresses are reused: a failure is attributed to the Pod the router chose, by UID, not to whichever Pod has its
// address now.
func TestAttributionFollowsThePodsUIDNotItsAddress(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC)
	events := []timeline.Event{
		{Type: timeline.EventSIGTERM, UID: "old", PodIP: "198.18.0.5", Time: t0},
		{Type: timeline.EventPodCreated, UID: "new", PodIP: "198.18.0.5", Time: t0.Add(2 * time.Second)},
	}
	failures := []load.Outcome{
		// Routed to the old Pod after its SIGTERM; the connect timed out once the Pod was gone.
		{Class: load.ClassTimeout, Endpoint: "198.18.0.5:8080", Pod: "old", Sent: t0.Add(500 * time.Millisecond), Latency: 5 * time.Second},
	}
	if got := attribute(failures, events); got[CauseBeforeServiceOut][load.ClassTimeout] != 1 {
		t.Errorf("attribution %v, want the timeout before-service-out (the old Pod)", got)
	}
}

// In flight at SIGTERM and at exit, from the attacker's side: every request routed to the Pod, successes too.
func TestInFlightAtSIGTERMAndExitPerPod(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	killed := 143
	a := NewAttributor(0, 10)
	a.Event(timeline.Event{Type: timeline.EventSIGTERM, UID: "p1", PodIP: "198.18.0.2", Time: at(1000)})
	a.Event(timeline.Event{Type: timeline.EventContainerExited, UID: "p1", PodIP: "198.18.0.2", Time: at(2000), ExitCode: &killed})
	req := func(sent, end int, class string) load.Outcome {
		return load.Outcome{Pod: "p1", Endpoint: "198.18.0.2:8080", Sent: at(sent), Latency: time.Duration(end-sent) * time.Millisecond, Class: class}
	}
	for _, o := range []load.Outcome{
		req(900, 1100, load.ClassNone),                                             // in flight at SIGTERM
		req(950, 990, load.ClassNone),                                              // ended before it
		req(1900, 1999, load.ClassReset),                                           // cut: the client saw it a moment before the exit was recorded
		req(1950, 2050, load.ClassEOF),                                             // cut
		req(1500, 1800, load.ClassNone),                                            // between the two
		{Pod: "other", Sent: at(900), Latency: time.Second, Class: load.ClassNone}, // another Pod
	} {
		a.Outcome(o)
	}
	got := a.Finish()
	if len(got.InFlight) != 1 || got.InFlight[0] != (rundir.PodInFlight{Pod: "p1", AtSIGTERM: 1, AtExit: 2}) {
		t.Errorf("in flight %+v, want p1 with 1 at SIGTERM and 2 at exit", got.InFlight)
	}
	if cut := got.ByClass[CauseInFlightCut]; cut[load.ClassReset]+cut[load.ClassEOF] != 2 {
		t.Errorf("cuts %v: the in-flight-cut count should match the in-flight count at exit", got.ByClass)
	}
}

// attribute sorts failed requests into phases from where they went (the endpoint) and when, against the Pods'
// recorded lifecycle.
func attribute(failures []load.Outcome, events []timeline.Event) Attribution {
	a := NewAttributor(0, 0)
	for _, e := range events {
		a.Event(e)
	}
	for _, f := range failures {
		a.pending = append(a.pending, f)
	}
	return a.Finish().ByClass
}
