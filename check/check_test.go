package check

import (
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/plan"
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
