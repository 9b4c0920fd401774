package plan

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEveryPlanInPlansLoads(t *testing.T) {
	files, err := filepath.Glob("../plans/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("plans: %v %v", files, err)
	}
	for _, f := range files {
		p, err := LoadFile(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if len(p.Cases) == 0 {
			t.Errorf("%s: no cases", f)
		}
		for _, c := range p.Cases {
			if c.Requests <= 0 || c.RolloutAt() >= c.Load.TotalDuration() {
				t.Errorf("%s/%s: %d requests, rollout at %s of %s", f, c.Name, c.Requests, c.RolloutAt(), c.Load.TotalDuration())
			}
		}
	}
}

func TestReferencePlansSendTheArticlesCounts(t *testing.T) {
	for file, want := range map[string]struct {
		requests int64
		cases    []string
		load     int
		sleeps   []time.Duration
		shutdown []string
	}{
		"l640-rep8-rps200.yaml":  {24060, []string{"cowweb-ru-gs", "cowweb-ru-gs-slp5", "cowweb-ru-gs-slp8"}, 640, []time.Duration{0, 5 * time.Second, 8 * time.Second}, []string{"graceful", "graceful", "graceful"}},
		"l1024-rep8-rps100.yaml": {12060, []string{"cowweb-ru-slp8", "cowweb-ru-gs-slp8"}, 1024, []time.Duration{8 * time.Second, 8 * time.Second}, []string{"immediate", "graceful"}},
	} {
		p, err := LoadFile("../plans/" + file)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Cases) != len(want.cases) {
			t.Fatalf("%s: %d cases, want %d", file, len(p.Cases), len(want.cases))
		}
		for i, c := range p.Cases {
			if c.Name != want.cases[i] || c.Requests != want.requests || c.App.Load != want.load || c.App.Replicas != 8 ||
				c.App.PreStop.Sleep.D() != want.sleeps[i] || c.App.Shutdown != want.shutdown[i] {
				t.Errorf("%s case %d: %s %d requests load %d replicas %d sleep %s shutdown %s", file, i, c.Name, c.Requests,
					c.App.Load, c.App.Replicas, c.App.PreStop.Sleep, c.App.Shutdown)
			}
			if at := c.RolloutAt(); at < 60*time.Second || at >= 120*time.Second {
				t.Errorf("%s/%s: restart at %s, want during the hold (60 s - 120 s)", file, c.Name, at)
			}
		}
	}
}

// The scaled plans keep what decides what a Pod meets — the app's knob, the preStop sleeps, the shutdowns, the load's
// shape and each Pod's share of the arrivals — and scale only the replicas, hence the rate.
func TestScaledPlansKeepEachPodsShareOfTheReference(t *testing.T) {
	for scaled, reference := range map[string]string{
		"l640-rep2-rps50.yaml":  "l640-rep8-rps200.yaml",
		"l1024-rep2-rps25.yaml": "l1024-rep8-rps100.yaml",
	} {
		s, err := LoadFile("../plans/" + scaled)
		if err != nil {
			t.Fatal(err)
		}
		r, err := LoadFile("../plans/" + reference)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Cases) != len(r.Cases) {
			t.Fatalf("%s: %d cases, its reference %d", scaled, len(s.Cases), len(r.Cases))
		}
		for i, c := range s.Cases {
			ref := r.Cases[i]
			perPod, refPerPod := c.Load.MaxRate()/float64(c.App.Replicas), ref.Load.MaxRate()/float64(ref.App.Replicas)
			if c.Name != ref.Name || c.App.Load != ref.App.Load || c.App.PreStop.Sleep != ref.App.PreStop.Sleep ||
				c.App.Shutdown != ref.App.Shutdown || perPod != refPerPod || c.Load.Connection != ref.Load.Connection ||
				c.Load.ThinkTime != ref.Load.ThinkTime || c.Load.TotalDuration() != ref.Load.TotalDuration() ||
				c.RolloutAt() != ref.RolloutAt() {
				t.Errorf("%s case %s: %d load, sleep %s, %s, %.1f/s per Pod, %s; reference %s: %d, %s, %s, %.1f/s per Pod, %s",
					scaled, c.Name, c.App.Load, c.App.PreStop.Sleep, c.App.Shutdown, perPod, c.Load.Connection,
					ref.Name, ref.App.Load, ref.App.PreStop.Sleep, ref.App.Shutdown, refPerPod, ref.Load.Connection)
			}
		}
	}
}

func TestRequestsIsTheIntegralOfTheRate(t *testing.T) {
	for _, c := range []struct {
		load Load
		want int64
	}{
		{Load{Rate: 40, Duration: Duration(30 * time.Second)}, 1200},
		{Load{Rate: 0.5, Duration: Duration(3 * time.Second)}, 1},
		{Load{StartRate: 1, Stages: []Stage{{Duration(60 * time.Second), 100}}}, 3030},
		{Load{StartRate: 0, Stages: []Stage{{Duration(10 * time.Second), 10}, {Duration(10 * time.Second), 0}}}, 100},
		{Load{StartRate: 0.1, Stages: []Stage{{Duration(1500 * time.Millisecond), 0.3}}}, 0},
		{Load{StartRate: 3, Stages: []Stage{{Duration(100 * time.Millisecond), 3}}}, 0},
	} {
		if got := c.load.Requests(); got != c.want {
			t.Errorf("%+v: %d requests, want %d", c.load, got, c.want)
		}
	}
}

func TestDefaultsFillWhatThePlanLeavesOut(t *testing.T) {
	p, err := Parse("min.yaml", []byte("name: min\nload: {rate: 10, duration: 10s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Cases[0]
	if p.Lab.Nodes != 3 || p.Lab.KubeProxy.MinSyncPeriod.D() != time.Second || p.Lab.KubeProxy.SyncPeriod.D() != 30*time.Second || p.Lab.KubeProxy.Mode != "nftables" {
		t.Errorf("lab defaults: %+v", p.Lab)
	}
	if p.Target.Kind != "lab" || p.Repeats != 1 || p.Report.Lang != "ja" || c.Name != DefaultCaseName {
		t.Errorf("plan defaults: %+v", p)
	}
	if c.App.Replicas != 8 || c.App.Load != 640 || !c.App.Slow || c.App.Shutdown != "graceful" || c.App.TerminationGracePeriod.D() != time.Minute ||
		c.App.Probes.Readiness.InitialDelay.D() != 10*time.Second || c.App.Strategy.MaxSurge != "25%" || c.App.PreStop.Action != "exec" {
		t.Errorf("app defaults: %+v", c.App)
	}
	if c.Load.Path != "/say?m=rollout-lab" || c.Load.Connection != ConnectionPerUser || c.Load.Timeout.D() != 30*time.Second || c.Requests != 100 {
		t.Errorf("load defaults: %+v, %d requests", c.Load, c.Requests)
	}
	if !c.Rollout.Restart || c.RolloutAt() != 5*time.Second || c.Rollout.Timeout.D() != 5*time.Minute {
		t.Errorf("rollout defaults: %+v at %s", c.Rollout, c.RolloutAt())
	}
	if c.Expect.MaxErrors != nil || c.Expect.MaxErrorRate != nil {
		t.Errorf("no expectation by default: %+v", c.Expect)
	}
}

func TestCaseOverridesMergeDeeply(t *testing.T) {
	p, err := Parse("o.yaml", []byte(`
name: o
app:
  preStop: {sleep: 8s, action: sleep}
  values: {podLabels: {team: a}, resources: {limits: {cpu: 500m}}}
load: {rate: 10, duration: 10s}
expect: {maxErrorRate: 0.01}
cases:
  - name: base
  - name: changed
    app:
      preStop: {sleep: 2s}
      values: {podLabels: {tier: b}}
    expect: {maxErrors: 0}
`))
	if err != nil {
		t.Fatal(err)
	}
	base, changed := p.Cases[0], p.Cases[1]
	if base.App.PreStop.Sleep.D() != 8*time.Second || changed.App.PreStop.Sleep.D() != 2*time.Second || changed.App.PreStop.Action != "sleep" {
		t.Errorf("preStop: base %+v changed %+v", base.App.PreStop, changed.App.PreStop)
	}
	labels := changed.App.Values["podLabels"].(map[string]any)
	if labels["team"] != "a" || labels["tier"] != "b" || changed.App.Values["resources"] == nil {
		t.Errorf("values merged: %v", changed.App.Values)
	}
	if *changed.Expect.MaxErrorRate != 0.01 || *changed.Expect.MaxErrors != 0 || base.Expect.MaxErrors != nil {
		t.Errorf("expect: base %+v changed %+v", base.Expect, changed.Expect)
	}
}

func TestMatrixExpandsTheCrossProduct(t *testing.T) {
	p, err := Parse("m.yaml", []byte(`
name: m
load: {rate: 10, duration: 10s}
cases:
  - name: explicit
matrix:
  params:
    app.preStop.sleep: [0s, 8s]
    app.shutdown: [graceful, immediate]
`))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range p.Cases {
		names = append(names, c.Name+"="+c.App.PreStop.Sleep.String()+"/"+c.App.Shutdown)
	}
	want := "explicit=0s/graceful sleep-0s-shutdown-graceful=0s/graceful sleep-0s-shutdown-immediate=0s/immediate " +
		"sleep-8s-shutdown-graceful=8s/graceful sleep-8s-shutdown-immediate=8s/immediate"
	if strings.Join(names, " ") != want {
		t.Errorf("cases %v\nwant %s", names, want)
	}

	sweep, err := LoadFile("../plans/sweep-prestop.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(sweep.Cases) != 5 || sweep.Cases[4].Name != "gs-slp8s" || sweep.Cases[4].App.PreStop.Sleep.D() != 8*time.Second {
		t.Errorf("sweep cases %+v", sweep.Cases)
	}
}

func TestErrorsNameFileLineAndField(t *testing.T) {
	_, err := Parse("plans/bad.yaml", []byte("name: bad\nload: {rate: 10, duration: 10s}\napp:\n  replicas: 0\n  shutdown: soon\n"))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("want 2 errors, got %v", err)
	}
	if got := list[0].Error(); got != `plans/bad.yaml:4:13: app.replicas: must be at least 1, got 0` {
		t.Errorf("first error %q", got)
	}
	if got := list[1].Error(); got != `plans/bad.yaml:5:13: app.shutdown: "soon" is not one of graceful, immediate, drain` {
		t.Errorf("second error %q", got)
	}
}

func TestLoadFileReportsAMissingFile(t *testing.T) {
	if _, err := LoadFile(filepath.Join(t.TempDir(), "nope.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("want not-exist, got %v", err)
	}
}

// run.json and the in-cluster workers carry the plan as JSON: the same field names as the YAML, and it reads back.
func TestPlanJSONUsesTheYAMLNames(t *testing.T) {
	p, err := Parse("json.yaml", []byte("name: j\nlab: {nodeCPU: 750m}\nload: {rate: 5, duration: 2s, thinkTime: 1s}\napp: {resources: {limits: {cpu: 1.5}}, terminationGracePeriod: 20s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"nodeCPU":"750m"`, `"thinkTime":"1s"`, `"terminationGracePeriod":"20s"`, `"limits":{"cpu":"1500m"}`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("JSON lacks %s:\n%s", want, data)
		}
	}
	var back Plan
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if back.Lab.NodeCPU != 750 || back.Cases[0].App.Resources.Limits.CPU != 1500 || back.Cases[0].Load.ThinkTime != p.Cases[0].Load.ThinkTime {
		t.Errorf("round trip: %+v %+v", back.Lab, back.Cases[0].App.Resources)
	}
	// Results written before CPU was written as in a plan hold bare milli-CPU numbers: they still read.
	var old Lab
	if err := json.Unmarshal([]byte(`{"nodes": 3, "nodeCPU": 0, "reservedCPU": 500}`), &old); err != nil || old.ReservedCPU != 500 {
		t.Errorf("an older run.json's lab: %v %+v", err, old)
	}
}

// A scenario plan plays another cluster under a scaled plan: every case is the scaled plan's, only the lab's
// kube-proxy (and the repeats) differ.
func TestScenarioPlansDifferFromTheirScaledPlanOnlyInTheCluster(t *testing.T) {
	for _, scenario := range []string{"k118", "gke"} {
		for _, base := range []string{"l640-rep2-rps50", "l1024-rep2-rps25"} {
			s, err := LoadFile("../plans/" + base + "-" + scenario + ".yaml")
			if err != nil {
				t.Fatal(err)
			}
			b, err := LoadFile("../plans/" + base + ".yaml")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(s.Cases, b.Cases) || s.Lab.Nodes != b.Lab.Nodes || s.Lab.Background != b.Lab.Background {
				t.Errorf("%s-%s differs from %s beyond the cluster", base, scenario, base)
			}
			if s.Lab.KubeProxy.Mode != "iptables" || s.Repeats != 3 {
				t.Errorf("%s-%s: kube-proxy %+v, %d repeats", base, scenario, s.Lab.KubeProxy, s.Repeats)
			}
		}
	}
}
