package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/rollout-lab/rollout-lab/deploy"
	"github.com/rollout-lab/rollout-lab/embedprom"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

const e2ePlan = `
name: e2e
description: preStop and graceful shutdown, end to end on the lab
lab: {nodes: 2}
app:
  replicas: 3
  load: 100
  delay: 200ms # requests last long enough to be in flight when a Pod exits, without loading the 2 cores
  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}
  terminationGracePeriod: 15s
# Every arrival a new user with its own connection, through the Service's tcp load balancer (the chart's Service is
# of type LoadBalancer), routed by a node's proxy when it opens.
load: {rate: 60, duration: 14s, timeout: 5s, connection: per-user}
rollout: {at: 2s, timeout: 60s}
cases:
  - name: gs-slp0
    description: graceful, no preStop
    expect: {maxErrors: 0} # breaks: the run ends with exit code 3
  - name: gs-slp4
    description: graceful, preStop sleep 4 s (longer than the service-out)
    app: {preStop: {sleep: 4s}}
    expect: {maxErrors: 0}
  - name: imm-slp4
    description: immediate exit, preStop sleep 4 s
    app: {preStop: {sleep: 4s}, shutdown: immediate}
    # After the service-out only connections opened before it still reach the old Pod: keep-alive ones. Go's client
    # (like browsers) retries a GET cut on a reused connection by itself; a POST's cut reaches the caller.
    load: {connection: pooled, method: POST, body: rollout}
report: {lang: en}
`

// The whole experiment on the lab, with what the physics implies: without a preStop sleep, connections reach Pods
// that stopped listening (refused) or are already gone (no route, timeout); a preStop sleep longer than the service-out with graceful shutdown loses
// nothing; an immediate exit after a long preStop still cuts the requests in flight on keep-alive connections that
// stay pinned to the old Pod.
func TestApplyShowsWhatPreStopAndGracefulShutdownBuy(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	planFile := filepath.Join(dir, "e2e.yaml")
	if err := os.WriteFile(planFile, []byte(e2ePlan), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "apply", planFile, "--results", filepath.Join(dir, "results"))
	if code != ExitExpectationFailed || !strings.Contains(errOut, "broke an expectation") {
		t.Fatalf("exit %d, want %d (gs-slp0 expects no error)\n%s\n%s", code, ExitExpectationFailed, out, errOut)
	}
	resultsDir := onlyDir(t, filepath.Join(dir, "results", "e2e", "*"))
	m, err := rundir.Load(resultsDir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Partial || len(m.Runs) != 3 {
		t.Fatalf("partial %v, %d runs", m.Partial, len(m.Runs))
	}
	byCase := map[string]load.Summary{}
	for _, r := range m.Runs {
		byCase[r.Labels.Case] = r.Summary
		if r.Summary.Sent != 840 || r.Summary.Completed != 840 {
			t.Errorf("%s: sent %d completed %d, want 840", r.Labels.Case, r.Summary.Sent, r.Summary.Completed)
		}
		t.Logf("%s: %v", r.Labels.Case, r.Summary.ByClass)
	}
	if s := byCase["gs-slp0"]; s.Errors() == 0 {
		t.Errorf("graceful without preStop: no connection reached a Pod that had stopped (%v)", s.ByClass)
	}
	if m.Provenance.Target["loadBalancer"] != "tcp" {
		t.Errorf("provenance: load balancer %q, want tcp", m.Provenance.Target["loadBalancer"])
	}
	for _, r := range m.Runs {
		t.Logf("%s attribution: %v", r.Labels.Case, r.AttributionByClass)
		// Through the tcp balancer a refused backend reaches the client as a reset.
		if before := r.AttributionByClass["before-service-out"]; r.Labels.Case == "gs-slp0" && before["reset"]+before["refused"]+before["timeout"] == 0 {
			t.Errorf("gs-slp0: no failure attributed to before-service-out: %v", r.AttributionByClass)
		}
		if other := r.Attribution["other"]; r.Labels.Case == "gs-slp0" && other*2 > r.Summary.Errors() {
			t.Errorf("gs-slp0: %d of %d failures attributed to no phase: %v", other, r.Summary.Errors(), r.AttributionByClass)
		}
		var attributed uint64
		for _, n := range r.Attribution {
			attributed += n
		}
		if attributed != r.Summary.Errors() {
			t.Errorf("%s: %d errors attributed of %d", r.Labels.Case, attributed, r.Summary.Errors())
		}
	}
	if s := byCase["imm-slp4"]; s.ByClass[load.ClassReset]+s.ByClass[load.ClassEOF] == 0 {
		t.Errorf("immediate exit: no request cut (reset, eof): %v", s.ByClass)
	}
	for _, r := range m.Runs {
		if cut := r.AttributionByClass["in-flight-cut"]; r.Labels.Case == "imm-slp4" && cut["reset"]+cut["eof"] == 0 {
			t.Errorf("imm-slp4: no reset or eof attributed to in-flight-cut: %v", r.AttributionByClass)
		}
		// Counted from the attacker's side: what an immediate exit cuts is what was in flight at that exit.
		var atExit, atSIGTERM uint64
		for _, p := range r.InFlight {
			atExit += p.AtExit
			atSIGTERM += p.AtSIGTERM
		}
		t.Logf("%s: in flight at SIGTERM %d, at exit %d (%d Pods)", r.Labels.Case, atSIGTERM, atExit, len(r.InFlight))
		if len(r.InFlight) != 3 {
			t.Errorf("%s: in-flight counts for %d Pods, want the 3 old ones", r.Labels.Case, len(r.InFlight))
		}
		if cut := r.Attribution["in-flight-cut"]; r.Labels.Case == "imm-slp4" && (atExit+2 < cut || cut+2 < atExit) {
			t.Errorf("imm-slp4: %d requests cut, %d in flight at exit: they should match", cut, atExit)
		}
		if r.Labels.Case == "gs-slp4" && atExit != 0 {
			t.Errorf("gs-slp4: %d requests in flight at a graceful exit", atExit)
		}
	}
	if s := byCase["gs-slp4"]; s.Errors() != 0 {
		t.Errorf("graceful with a long preStop: %d errors (%v)", s.Errors(), s.ByClass)
	}
	// Every old Pod's termination is in the case's events.
	count := eventCounts(t, resultsDir, "gs-slp4")
	if count[timeline.EventSIGTERM] != 3 || count[timeline.EventPreStopEnd] != 3 || count[timeline.EventServiceOut] != 6 ||
		count[timeline.EventEndpointNotReady] != 3 || count[timeline.EventListenerClosed] != 3 {
		t.Errorf("events of gs-slp4: %v", count)
	}
	md, err := os.ReadFile(filepath.Join(resultsDir, "report.md"))
	if !bytes.Contains(md, []byte("| Expectations | ✗ errors ≤ 0 (")) || !bytes.Contains(md, []byte(" | ✓ errors ≤ 0 (0) | - |")) {
		t.Errorf("expectation row missing or failed:\n%s", md)
	}
	if err != nil || !bytes.Contains(md, []byte("| Total requests | 840 | 840 | 840 |")) {
		t.Errorf("report.md: %v\n%s", err, md)
	}
	t.Logf("\n%s", md)
	if !strings.Contains(out, filepath.Join(resultsDir, "report.html")) {
		t.Errorf("apply does not say where report.html is:\n%s", out)
	}
	reportRendersInABrowser(t, resultsDir)
	dashboardQueriesAnswer(t, resultsDir, m)
}

// eventCounts reads a case's first run's events.json and counts its events by type.
func eventCounts(t *testing.T, resultsDir, caseName string) map[string]int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(resultsDir, "cases", caseName, "run-1", "events.json"))
	if err != nil {
		t.Fatal(err)
	}
	var events []timeline.Event
	if err := json.Unmarshal(data, &events); err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, e := range events {
		count[e.Type]++
	}
	return count
}

// dashboardQueriesAnswer runs every query of the Grafana dashboards over the finished run's stored TSDB: each must
// run without error and find data, so no panel stays empty.
func dashboardQueriesAnswer(t *testing.T, resultsDir string, m *rundir.Manifest) {
	t.Helper()
	prom, err := embedprom.Start(embedprom.Options{Dir: filepath.Join(resultsDir, rundir.TSDBDir), ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Close()
	api, err := prom.Client()
	if err != nil {
		t.Fatal(err)
	}
	dashboards, err := deploy.Dashboards()
	if err != nil {
		t.Fatal(err)
	}
	r := promv1.Range{Start: m.Started, End: m.Finished, Step: time.Second}
	vars := map[string]string{"plan": m.Plan.Name, "case": ".*", "run": ".*", "__rate_interval": "4s", "__interval": "1s",
		"__range": fmt.Sprintf("%ds", int(r.End.Sub(r.Start).Seconds())+1)}
	for _, d := range dashboards {
		for _, q := range d.Queries {
			expr, err := deploy.Expand(q.Expr, vars)
			if err != nil {
				t.Fatal(err)
			}
			v, _, _, err := api.QueryRange(context.Background(), expr, r)
			if err != nil {
				t.Errorf("%s, %s: %v", d.Title, q.Where, err)
				continue
			}
			if matrix, ok := v.(model.Matrix); !ok || len(matrix) == 0 {
				t.Errorf("%s, %s: no data for %s", d.Title, q.Where, expr)
			}
		}
	}
}

const e2eHTTPPlan = `
name: e2e-http
description: an immediate exit behind an http load balancer with pooled backend connections
lab: {nodes: 2, loadBalancer: {mode: http, idleTimeout: 60s}}
app:
  replicas: 3
  load: 100
  delay: 300ms # in flight when the process exits
  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}
  terminationGracePeriod: 15s
  preStop: {sleep: 3s}
  shutdown: immediate
load: {rate: 40, duration: 12s, timeout: 5s, connection: per-user}
rollout: {at: 2s, timeout: 60s}
cases:
  - name: imm-slp3
report: {lang: en}
`

// Behind an http balancer the client's connections end at the balancer, whose pooled backend connections stay on
// the old Pods after the service-out: an immediate exit cuts what is in flight on them, and the client gets 502s —
// each attributed to the cut through the balancer's record of the backend it used.
func TestApplyThroughAnHTTPBalancerTurnsCutsInto502s(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	planFile := filepath.Join(dir, "e2e-http.yaml")
	if err := os.WriteFile(planFile, []byte(e2eHTTPPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "apply", planFile, "--results", filepath.Join(dir, "results"))
	if code != ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	m, err := rundir.Load(onlyDir(t, filepath.Join(dir, "results", "e2e-http", "*")))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Runs) != 1 || m.Runs[0].Summary.Completed != 480 || m.Provenance.Target["loadBalancer"] != "http" {
		t.Fatalf("runs %+v, target %v", m.Runs, m.Provenance.Target)
	}
	r := m.Runs[0]
	t.Logf("outcomes %v, attribution %v", r.Summary.ByClass, r.AttributionByClass)
	if r.Summary.ByCode["502"] == 0 || r.AttributionByClass["in-flight-cut"]["http_5xx"] == 0 {
		t.Errorf("no 502 attributed to in-flight-cut: codes %v, attribution %v", r.Summary.ByCode, r.AttributionByClass)
	}
	if r.Summary.ByClass[load.ClassReset]+r.Summary.ByClass[load.ClassEOF] != 0 {
		t.Errorf("the http balancer let connection errors through to the client: %v", r.Summary.ByClass)
	}
}
