package check

import (
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// terminations is the timeline of one old Pod: SIGTERM at 0, its listener closed, two proxies letting go, exit.
func terminations(closed, exit time.Duration, code int, killed bool) *analysis.RunTimeline {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	ev := func(typ string, at time.Duration) timeline.Event {
		return timeline.Event{Type: typ, UID: "old", Time: t0.Add(at)}
	}
	events := []timeline.Event{ev(timeline.EventSIGTERM, 0), ev(timeline.EventListenerClosed, closed),
		ev(timeline.EventServiceOut, 300*time.Millisecond), ev(timeline.EventServiceOut, 900*time.Millisecond)}
	if killed {
		events = append(events, ev(timeline.EventSIGKILL, exit))
	}
	exited := ev(timeline.EventContainerExited, exit)
	exited.ExitCode = &code
	return &analysis.RunTimeline{Events: append(events, exited)}
}

func checkRun(name string, errors uint64, sleep time.Duration, tl *analysis.RunTimeline) analysis.CaseRun {
	return analysis.CaseRun{Case: name, Run: "1", Timeline: tl,
		Conditions:  analysis.Conditions{AppKnown: true, PreStopSleep: plan.Duration(sleep), GracePeriod: plan.Duration(30 * time.Second), Replicas: 3},
		Whole:       analysis.Outcome{Total: 200, Errors: errors, ByClass: map[string]uint64{load.ClassHTTP5xx: errors}},
		Attribution: map[string]uint64{attribution.CauseBeforeServiceOut: errors}}
}

func TestVerdictsOfAnAppThatClosesAtSIGTERM(t *testing.T) {
	closesAtOnce := terminations(5*time.Millisecond, 50*time.Millisecond, 0, false)
	inFlight := checkRun(CaseInFlight, 2, 0, closesAtOnce)
	inFlight.Attribution = map[string]uint64{attribution.CauseInFlightCut: 2}
	inFlight.InFlight = []rundir.PodInFlight{{Pod: "old", AtSIGTERM: 5, AtExit: 2}}
	rep := analysis.Report{Runs: []analysis.CaseRun{
		checkRun(CaseAccept, 7, 0, closesAtOnce), inFlight, checkRun(CaseIdle, 0, 0, closesAtOnce),
		checkRun(sweepPrefix+"1s", 0, time.Second, closesAtOnce), checkRun(sweepPrefix+"2s", 0, 2*time.Second, closesAtOnce),
	}, ServiceOut: &analysis.ServiceOut{P99: 0.95, RecommendedPreStop: plan.Duration(2 * time.Second)}}
	got := map[string]Verdict{}
	verdicts := Verdicts(rep, Expect{})
	for _, v := range verdicts {
		got[v.Behaviour] = v
	}
	for behaviour, ok := range map[string]bool{KeepsAccepting: false, FinishesInFlight: false, ClosesIdle: true, ExitsInTime: true, PreStopNeeded: true} {
		if got[behaviour].OK != ok {
			t.Errorf("%s: %+v, want ok=%v", behaviour, got[behaviour], ok)
		}
	}
	if f := got[FinishesInFlight].Figure; f != "5 request(s) in flight at 1 SIGTERM(s): 3 completed; 2 still in flight at exit; 2 request(s) cut by the exit (2 errors in all)" {
		t.Errorf("in flight: %s", f)
	}
	if f := got[PreStopNeeded].Figure; f[:55] != "the smallest preStop sleep with no error here: 1s; the " {
		t.Errorf("preStop: %s", f)
	}
	if got[FinishesInFlight].Result != ResultFail || got[FinishesInFlight].Mark() != "✗" || got[ClosesIdle].Mark() != "✓" {
		t.Errorf("results: in flight %s %s, idle %s", got[FinishesInFlight].Result, got[FinishesInFlight].Mark(), got[ClosesIdle].Mark())
	}
	if !Failed(verdicts) || got[KeepsAccepting].Fix == "" {
		t.Error("a ✗ does not fail the check, or has no fix")
	}
	// Allowed behaviours inform without failing.
	if Failed(Verdicts(rep, Expect{Allow: []string{KeepsAccepting, FinishesInFlight}})) {
		t.Error("allowed behaviours still fail the check")
	}
	// An app that ignores SIGTERM needs SIGKILL.
	stubborn := terminations(0, 30*time.Second, 137, true)
	rep.Runs = []analysis.CaseRun{checkRun(CaseAccept, 0, 0, stubborn)}
	if v := Verdicts(rep, Expect{})[3]; v.Behaviour != ExitsInTime || v.OK {
		t.Errorf("stubborn: %+v", v)
	}
}

// A behaviour the run did not put to the test is –, neither pass nor fail, unless --expect exercised.
func TestNothingInFlightIsNotExercised(t *testing.T) {
	exitsAtOnce := terminations(time.Millisecond, 2*time.Millisecond, 0, false)
	accept := checkRun(CaseAccept, 0, 0, exitsAtOnce)
	accept.Whole.P50Ms = 0.4
	inFlight := checkRun(CaseInFlight, 0, 0, exitsAtOnce)
	inFlight.Attribution = nil
	inFlight.Conditions.MaxRPS = 300
	inFlight.InFlight = []rundir.PodInFlight{{Pod: "old"}}
	rep := analysis.Report{Runs: []analysis.CaseRun{accept, inFlight}}
	v := Verdicts(rep, Expect{})[1]
	if v.Behaviour != FinishesInFlight || v.Result != ResultNotExercised || v.Mark() != "–" || v.OK {
		t.Fatalf("nothing in flight: %+v", v)
	}
	if !strings.Contains(v.Figure, "300.0/s × the app's median latency 0.4 ms → 0.0 in flight per Pod expected") || !strings.Contains(v.Figure, "slower --path") {
		t.Errorf("figure: %s", v.Figure)
	}
	// The idle case did not run: – too. Neither fails the check by default.
	if idle := Verdicts(rep, Expect{})[2]; idle.Result != ResultNotExercised || !strings.Contains(idle.Figure, "did not run") {
		t.Errorf("idle case not run: %+v", idle)
	}
	if Failed(Verdicts(rep, Expect{})) {
		t.Error("not exercised behaviours fail the check by default")
	}
	strict := Verdicts(rep, Expect{Exercised: true})
	if v := strict[1]; v.Result != ResultFail || v.Mark() != "✗" || !Failed(strict) {
		t.Errorf("--expect exercised: %+v", v)
	}
	// An exit that cut requests sent after SIGTERM exercised it, even with none in flight at SIGTERM.
	cutLate := inFlight
	cutLate.Attribution = map[string]uint64{attribution.CauseInFlightCut: 3}
	cutLate.Whole.Errors = 3
	cutLate.InFlight = []rundir.PodInFlight{{Pod: "old", AtExit: 1}}
	if v := Verdicts(analysis.Report{Runs: []analysis.CaseRun{accept, cutLate}}, Expect{})[1]; v.Result != ResultFail || v.NotExercised != "" {
		t.Errorf("cut at exit: %+v", v)
	}
	var md strings.Builder
	if err := WriteVerdicts(&md, Verdicts(rep, Expect{})); err != nil || !strings.Contains(md.String(), "| – | Does it finish what it started? |") {
		t.Errorf("report table: %v\n%s", err, md.String())
	}
}

func TestExpectFlags(t *testing.T) {
	e, stored, err := ParseExpect([]string{"max-errors=3", "max-exit=5s", "allow=closes-idle", "exercised"})
	if err != nil || e.MaxErrors != 3 || e.MaxExit != 5*time.Second || len(e.Allow) != 1 || stored["max-exit"] != "5s" || !e.Exercised {
		t.Fatalf("%+v %v %v", e, stored, err)
	}
	for _, bad := range []string{"max-errors", "max-errors=x", "max-exit=-1s", "allow=fast", "speed=1", "exercised=maybe"} {
		if _, _, err := ParseExpect([]string{bad}); err == nil {
			t.Errorf("--expect %s accepted", bad)
		}
	}
}
