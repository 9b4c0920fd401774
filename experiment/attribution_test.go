package experiment

import (
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/load"
)

func TestAttributeByEndpointAndTime(t *testing.T) {
	t0 := time.Date(2026, 11, 28, 4, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	zero, killed := 0, 143
	events := []lab.Event{
		{Type: lab.EventDeletionSeen, PodIP: "198.18.0.2", Time: at(0)},
		{Type: lab.EventSIGTERM, PodIP: "198.18.0.2", Time: at(10)},
		{Type: lab.EventServiceOut, PodIP: "198.18.0.2", Node: "lab-node-1", Time: at(700)},
		{Type: lab.EventContainerExited, PodIP: "198.18.0.2", Time: at(20), ExitCode: &zero},
		{Type: lab.EventSIGTERM, PodIP: "198.18.0.3", Time: at(8000)},
		{Type: lab.EventContainerExited, PodIP: "198.18.0.3", Time: at(8005), ExitCode: &killed},
	}
	failures := []load.Outcome{
		{Class: load.ClassRefused, Endpoint: "198.18.0.2:8080", Sent: at(300)},                                // after SIGTERM, before service-out
		{Class: load.ClassRefused, Endpoint: "198.18.0.9:8080", Sent: at(300)},                                // a Pod never terminated
		{Class: load.ClassReset, Endpoint: "198.18.0.3:8080", Sent: at(7990), Latency: 20 * time.Millisecond}, // running at the immediate exit
		{Class: load.ClassEOF, Endpoint: "198.18.0.2:8080", Sent: at(15), Latency: 10 * time.Millisecond},     // graceful exit: not a cut
		{Class: load.ClassTimeout, Endpoint: "", Sent: at(100)},
		{Class: load.ClassTimeout, Endpoint: "198.18.0.2:8080", Sent: at(500)}, // the Pod's address already gone
		{Class: load.ClassOther, Endpoint: "198.18.0.3:8080", Sent: at(100)},   // before that Pod's SIGTERM
	}
	attribution := Attribute(failures, events)
	got := attribution.ByPhase()
	want := map[string]uint64{analysis.PhaseBeforeServiceOut: 2, analysis.PhaseInFlightCut: 1, analysis.PhaseOther: 4}
	for phase, n := range want {
		if got[phase] != n {
			t.Errorf("%s: %d, want %d (all: %v)", phase, got[phase], n, got)
		}
	}
	if n := attribution[analysis.PhaseBeforeServiceOut]; n[load.ClassRefused] != 1 || n[load.ClassTimeout] != 1 {
		t.Errorf("before-service-out by class: %v", n)
	}
	if n := attribution[analysis.PhaseInFlightCut]; n[load.ClassReset] != 1 {
		t.Errorf("in-flight-cut by class: %v", n)
	}
}
