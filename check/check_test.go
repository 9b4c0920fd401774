package check

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

func TestPlanHasOneCasePerBehaviourAndTheSweep(t *testing.T) {
	p, data, err := Plan(Options{Command: []string{"/usr/local/bin/server", "--listen", ":9000"}, Port: 9000, Health: "/healthz"}, plan.Overrides{})
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	var names []string
	for _, c := range p.Cases {
		names = append(names, c.Name)
	}
	if got := strings.Join(names, ","); got != "accept,in-flight,idle,accept-slp1s,accept-slp2s" {
		t.Errorf("cases %s", got)
	}
	accept, _ := p.Case("accept")
	if accept.Load.Connection != plan.ConnectionPerUser || accept.App.Port != 9000 || accept.App.Probes.Readiness.Path != "/healthz" ||
		accept.App.PreStop.Hook() || accept.App.Replicas != DefaultReplicas || accept.App.TerminationGracePeriod.D() != DefaultGrace {
		t.Errorf("accept case: %+v", accept)
	}
	if argv := p.Lab.Images[AppImage]; strings.Join(argv, " ") != "/usr/local/bin/server --listen :9000" {
		t.Errorf("lab image mapping %v", p.Lab.Images)
	}
	inFlight, _ := p.Case("in-flight")
	if inFlight.Load.Connection != plan.ConnectionPooled {
		t.Errorf("in-flight load %+v", inFlight.Load)
	}
	slp2, _ := p.Case("accept-slp2s")
	if slp2.App.PreStop.Sleep.D() != 2*time.Second || !slp2.App.PreStop.Hook() {
		t.Errorf("sweep case %+v", slp2.App.PreStop)
	}
	// The plan it prints is a plan file: it parses back to the same cases.
	back, err := plan.Parse("printed.yaml", data)
	if err != nil || len(back.Cases) != len(p.Cases) {
		t.Fatalf("printed plan: %v", err)
	}
	if _, _, err := Plan(Options{}, plan.Overrides{}); err == nil {
		t.Error("a check without an app")
	}
	// With the app's own preStop sleep of 1 s, only longer sleeps are swept.
	p, _, err = Plan(Options{Command: []string{"app"}, PreStop: time.Second}, plan.Overrides{})
	if err != nil || len(p.Cases) != 4 {
		t.Fatalf("with --prestop 1s: %v %d cases", err, len(p.Cases))
	}
}

// Little's law: the rate that puts InFlightPerPod requests in flight at each Pod, bounded by the rate cap.
func TestChooseInFlightLoad(t *testing.T) {
	for _, tc := range []struct {
		latency        time.Duration
		rate, perPod   float64
		tooFast        bool
		maxOutstanding int
	}{
		{200 * time.Millisecond, 45, 3, false, 9}, // 9 in flight / 0.2 s
		{20 * time.Millisecond, 300, 2, false, 9}, // 450/s wanted, bounded: 300 × 0.02 / 3
		{500 * time.Microsecond, 300, 0.05, true, 9},
	} {
		l := ChooseInFlightLoad(tc.latency, 3, DefaultMaxRate)
		if l.Rate != tc.rate || math.Abs(l.PerPod-tc.perPod) > 1e-9 || l.TooFast() != tc.tooFast || l.MaxInFlight != tc.maxOutstanding {
			t.Errorf("latency %s: %+v", tc.latency, l)
		}
		if tc.tooFast != strings.Contains(l.String(), "slower --path") {
			t.Errorf("latency %s: %s", tc.latency, l)
		}
	}
}

// The in-flight case takes its load from the accept case's measured latency; other cases stay as they are.
func TestTuneInFlightFromTheAcceptCase(t *testing.T) {
	p, _, err := Plan(Options{Command: []string{"app"}}, plan.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	inFlight, _ := p.Case(CaseInFlight)
	if _, _, ok := TuneInFlight(inFlight, nil, DefaultMaxRate); ok {
		t.Error("tuned without a measurement")
	}
	finished := []rundir.RunRecord{
		{Labels: load.Labels{Case: CaseAccept, Run: "1"}, Summary: load.Summary{P50: 100 * time.Millisecond}},
		{Labels: load.Labels{Case: CaseAccept, Run: "2"}, Summary: load.Summary{P50: 120 * time.Millisecond}},
		{Labels: load.Labels{Case: CaseAccept, Run: "3"}, Summary: load.Summary{P50: 90 * time.Millisecond, Stopped: true}},
	}
	tuned, chosen, ok := TuneInFlight(inFlight, finished, DefaultMaxRate)
	if !ok || chosen.Latency != 120*time.Millisecond || tuned.Load.Rate != 75 || tuned.Load.MaxWorkers != 9 || tuned.Load.Workers > 9 ||
		tuned.Requests != tuned.Load.Requests() || tuned.Requests != 750 {
		t.Errorf("tuned %+v, chosen %+v", tuned.Load, chosen)
	}
	accept, _ := p.Case(CaseAccept)
	if same, _, ok := TuneInFlight(accept, finished, DefaultMaxRate); ok || same.Load.Rate != accept.Load.Rate {
		t.Error("the accept case was tuned")
	}
}
