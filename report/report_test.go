package report

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/plot"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./analysis -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (go test ./analysis -update rewrites it):\n%s", name, got)
	}
}

// completed is the report of r as the writers get it: its conclusions across runs computed.
func completed(r analysis.Report) Contents {
	r.Complete()
	return Contents{Report: r}
}

func fixtureReport() Contents {
	start := time.Date(2026, 11, 28, 3, 0, 0, 0, time.UTC)
	run := func(name string, sleep time.Duration, shutdown string, refused, reset uint64) analysis.CaseRun {
		total := uint64(24060)
		errors := refused + reset
		seconds := []float64{0, 1, 2, 3, 4, 5}
		r := analysis.CaseRun{
			Case: name, Run: "1",
			Conditions: analysis.Conditions{AppKnown: true, PreStopSleep: plan.Duration(sleep), PreStopAction: "exec", Shutdown: shutdown, GracePeriod: plan.Duration(time.Minute),
				Replicas: 8, CPULoad: 640, MaxRPS: 200, Planned: 24060, Connection: plan.ConnectionPerUser, ThinkTime: plan.Duration(time.Second)},
			Phases: map[string]time.Time{load.PhaseLoadStart: start, load.PhaseLoadEnd: start.Add(5 * time.Second),
				load.PhaseRolloutStart: start.Add(2 * time.Second), load.PhaseRolloutComplete: start.Add(4 * time.Second)},
			Load:    analysis.Window{Start: start.Add(-time.Second), End: start.Add(6 * time.Second)},
			Rollout: &analysis.Window{Start: start.Add(2 * time.Second), End: start.Add(4500 * time.Millisecond)},
			Whole: analysis.Outcome{Total: total, OK: total - errors, Errors: errors, ErrorRate: float64(errors) / float64(total),
				ByClass: map[string]uint64{load.ClassNone: total - errors, load.ClassRefused: refused, load.ClassReset: reset},
				ByCode:  map[string]uint64{"200": total - errors, "0": errors}, MeanMs: 12.3456, P50Ms: 9.8, P90Ms: 20.1, P99Ms: 48.25},
			During: &analysis.Outcome{Total: 1000, OK: 1000 - errors, Errors: errors, ErrorRate: float64(errors) / 1000, P99Ms: 61},
			Series: analysis.Series{Seconds: seconds,
				RateByClass: map[string]analysis.Points{load.ClassNone: {10, 50, 100, 90, 100, 60}, load.ClassRefused: {0, 0, float64(refused), 0, 0, 0}},
				P50Ms:       analysis.Points{9, 9.5, 10, math.NaN(), 9.9, 9.1}, P99Ms: analysis.Points{20, 30, 60, 55, 40, 21}},
		}
		if refused == 0 {
			delete(r.Series.RateByClass, load.ClassRefused)
		}
		// An immediate exit cuts what is in flight at exit; a graceful one finishes it.
		atExit := uint64(0)
		if shutdown == "immediate" {
			atExit = reset
		}
		// The attacker kept its schedule, but for the run whose machine was starved.
		r.Lateness = &analysis.Lateness{P99Ms: 1.2, MaxMs: 4.5}
		busy, waiting, node, pods := 0.62, 0.08, 0.04, 0.0
		if name == "cowweb-ru-slp8" {
			r.Lateness = &analysis.Lateness{P99Ms: 35, MaxMs: 120}
			busy, node = 0.95, 0.31
		}
		r.CPU = &analysis.CPUUse{MachineBusy: &busy, MachineWaiting: &waiting, NodeThrottled: &node, NodeThrottledName: "lab-node-2", PodThrottled: &pods}
		if name == "cowweb-ru-gs" {
			r.CPU.PodThrottled = nil // no container with a limit
		}
		r.InFlight = []rundir.PodInFlight{{Pod: "uid-a", AtSIGTERM: 3, AtExit: atExit / 2}, {Pod: "uid-b", AtSIGTERM: 5, AtExit: atExit - atExit/2}}
		return r
	}
	return completed(analysis.Report{Plan: "l640-rep8-rps200", Description: "golden fixture",
		CPUModel:   "each node has 500m CPU (capacity and allocatable), enforced by cgroup v1 CFS quota; Pods get shares from requests and quota from limits as the kubelet sets them; 500m of the machine's 2 CPUs stay with the runner and control plane",
		CPUModelJa: "各ノードの CPU は 500m (capacity と allocatable)、cgroup v1 の CFS quota で制限",
		LoadPath:   "per-user connections → the Service's tcp load balancer (198.18.15.241:80) → a node's proxy (round robin over 3 nodes) → a Pod",
		LoadPathJa: "ユーザーごとの接続 → Service の tcp ロードバランサー (198.18.15.241:80) → Pod", Runs: []analysis.CaseRun{
			run("cowweb-ru-gs", 0, "graceful", 37, 2),
			run("cowweb-ru-gs-slp5", 5*time.Second, "graceful", 0, 0),
			run("cowweb-ru-slp8", 8*time.Second, "immediate", 0, 11),
		}})
}

func TestMarkdownGolden(t *testing.T) {
	for _, lang := range Languages {
		var article, long bytes.Buffer
		if err := WriteMarkdown(&article, fixtureReport(), lang); err != nil {
			t.Fatal(err)
		}
		if err := WriteMarkdownLong(&long, fixtureReport(), lang); err != nil {
			t.Fatal(err)
		}
		golden(t, "article."+lang+".md", article.Bytes())
		golden(t, "long."+lang+".md", long.Bytes())
	}
	if err := WriteMarkdown(&bytes.Buffer{}, fixtureReport(), "fr"); err == nil {
		t.Error("unknown language accepted")
	}
}

func TestCSVAndJSONGolden(t *testing.T) {
	var csvOut, jsonOut bytes.Buffer
	if err := WriteCSV(&csvOut, fixtureReport()); err != nil {
		t.Fatal(err)
	}
	golden(t, "report.csv", csvOut.Bytes())
	if err := WriteJSON(&jsonOut, fixtureReport()); err != nil {
		t.Fatal(err)
	}
	golden(t, "report.json", jsonOut.Bytes())
	var back analysis.Report
	if err := json.Unmarshal(jsonOut.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if p := back.Runs[0].Series.P50Ms; !math.IsNaN(p[3]) || p[2] != 10 || back.Runs[0].Whole.ByClass[load.ClassRefused] != 37 {
		t.Errorf("round trip: %v %v", p, back.Runs[0].Whole.ByClass)
	}
}

func TestChartsGolden(t *testing.T) {
	rep := fixtureReport()
	for kind, build := range map[string]func(analysis.CaseRun) (*plot.Plot, error){"requests": RequestsPlot, "latency": LatencyPlot} {
		p, err := build(rep.Runs[0])
		if err != nil {
			t.Fatal(err)
		}
		var svg bytes.Buffer
		if err := WritePlot(&svg, p, "svg"); err != nil {
			t.Fatal(err)
		}
		golden(t, kind+".svg", svg.Bytes())
	}
	dir := t.TempDir()
	files, err := WritePlots(dir, rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(rep.Runs)*2*len(ChartFormats) {
		t.Errorf("wrote %d chart files: %v", len(files), files)
	}
	png, err := os.ReadFile(filepath.Join(dir, "cowweb-ru-gs-requests.png"))
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("png: %v", err)
	}
}

func TestWriteAllWritesEveryReport(t *testing.T) {
	dir := t.TempDir()
	if err := WriteAll(dir, fixtureReport(), "ja", HTMLDocument{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.md", "report.en.md", "report.json", "report.csv", "report.html", "charts/cowweb-ru-slp8-latency.svg"} {
		if info, err := os.Stat(filepath.Join(dir, name)); err != nil || info.Size() == 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	if !bytes.Contains(md, []byte("| 総リクエスト数 | 24060 | 24060 | 24060 |")) {
		t.Errorf("report.md:\n%s", md)
	}
}

func TestExpectationsAreCheckedAndShown(t *testing.T) {
	zero, rate := int64(0), 0.001
	got := analysis.CheckExpectations(plan.Expect{MaxErrors: &zero, MaxErrorRate: &rate}, analysis.Outcome{Total: 1000, Errors: 1, ErrorRate: 0.001})
	if len(got) != 2 || got[0].OK || got[0].Condition != "errors ≤ 0" || got[0].Actual != "1" || !got[1].OK {
		t.Fatalf("expectations %+v", got)
	}
	rep := fixtureReport()
	rep.Runs[1].Expectations = got
	if !rep.Failed() {
		t.Error("a broken expectation does not fail the report")
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, rep, "en"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(md.Bytes(), []byte("| Expectations | - | ✗ errors ≤ 0 (1), ✓ error rate ≤ 0.1% (0.10%) | - |")) {
		t.Errorf("markdown:\n%s", md.String())
	}
	if analysis.CheckExpectations(plan.Expect{}, analysis.Outcome{Errors: 5}) != nil || fixtureReport().Failed() {
		t.Error("no expectation, no failure")
	}
}

// Run labels come from a results directory that may be anyone's: chart files stay in the charts directory.
func TestChartFileNamesStayInTheirDirectory(t *testing.T) {
	for _, tc := range []struct {
		run  analysis.CaseRun
		want string
	}{
		{analysis.CaseRun{Case: "gs-slp8", Run: "1"}, "gs-slp8-requests.png"},
		{analysis.CaseRun{Case: "gs/slp 8", Run: "2"}, "gs_slp_8-run2-requests.png"},
		{analysis.CaseRun{Case: "../../etc/cron.d/x", Run: "1"}, "_.._etc_cron.d_x-requests.png"},
		{analysis.CaseRun{Case: "..", Run: "../x"}, "_-run_x-requests.png"},
	} {
		got := chartFileName(tc.run, "requests", "png")
		if got != tc.want || filepath.Base(got) != got || strings.HasPrefix(got, ".") {
			t.Errorf("%+v: %q, want %q", tc.run, got, tc.want)
		}
	}
}
