package plan

import (
	"strings"
	"testing"
	"time"
)

// Flags become a plan through the plan format: its defaults and validation apply, stages are parsed.
func TestFromLoadFlags(t *testing.T) {
	p, err := FromLoadFlags("attack", map[string]string{"startRate": "1", "stages": "10s:200, 5s:200,10s:1", "timeout": "2s", "maxWorkers": "50"})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := p.Case(DefaultCaseName)
	if len(c.Load.Stages) != 3 || c.Load.Stages[1].Target != 200 || c.Load.Stages[2].Duration.D() != 10*time.Second ||
		c.Load.Timeout.D() != 2*time.Second || c.Load.MaxWorkers != 50 || c.Load.StartRate != 1 {
		t.Errorf("load %+v", c.Load)
	}
	if c.Rollout.Restart {
		t.Error("an attack's plan restarts nothing")
	}
	if _, err := FromLoadFlags("attack", map[string]string{"stages": "10s"}); err == nil || !strings.Contains(err.Error(), "DURATION:TARGET") {
		t.Errorf("bad stage: %v", err)
	}
	if _, err := FromLoadFlags("attack", map[string]string{"rate": "-5", "duration": "10s"}); err == nil || !strings.Contains(err.Error(), "load.rate") {
		t.Errorf("negative rate: %v", err)
	}
	for _, f := range LoadFlags {
		if f.Flag == "" || f.Key == "" {
			t.Errorf("flag %+v", f)
		}
	}
}
