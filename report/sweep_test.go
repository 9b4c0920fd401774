package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/plan"
)

// sweepFixture is a preStop sweep of 0, 2 and 4 s, three runs each: errors fall with the sleep and vanish at 4 s;
// the measured service-out p99 (0.95 s) recommends 2 s.
func sweepFixture() Contents {
	base := fixtureReport().Runs[1] // graceful, no errors
	var runs []analysis.CaseRun
	for _, sleep := range []time.Duration{0, 2 * time.Second, 4 * time.Second} {
		for run, errs := range map[time.Duration][]uint64{0: {40, 52, 47}, 2 * time.Second: {3, 0, 1}, 4 * time.Second: {0, 0, 0}}[sleep] {
			r := base
			r.Case, r.Run = fmt.Sprintf("gs-slp%ds", int(sleep.Seconds())), fmt.Sprint(run+1)
			r.Conditions.PreStopSleep, r.Conditions.PreStopAction = plan.Duration(sleep), "exec"
			if sleep == 0 {
				r.Conditions.PreStopAction = "none"
			}
			r.Whole.Errors = errs
			r.Whole.ErrorRate = float64(errs) / float64(r.Whole.Total)
			runs = append(runs, r)
		}
	}
	return completed(analysis.Report{Plan: "sweep-prestop", Runs: runs, ServiceOut: &analysis.ServiceOut{Metric: "m", Count: 72, P50: 0.5, P99: 0.95, RecommendedPreStop: plan.Duration(2 * time.Second)}})
}

func TestSweepAnswersTheSmallestCleanSleep(t *testing.T) {
	rep := sweepFixture()
	s := analysis.SweepOf(rep.Report)
	if s == nil || len(s.Points) != 3 || s.SmallestClean == nil || *s.SmallestClean != plan.Duration(4*time.Second) || s.Agrees == nil || *s.Agrees {
		t.Fatalf("sweep %+v", s)
	}
	if p := s.Points[0]; p.Errors != 139 || p.Runs != 3 || p.Clean || p.ErrorRateCI95 == nil || p.ErrorRateCI95[0] > p.ErrorRate.Mean {
		t.Errorf("0 s: %+v", p)
	}
	want := "The smallest preStop sleep with zero errors in every run is 4s (3 run(s) per sleep). The measured service-out p99 is 0.95s and the recommended sleep 2s: they disagree (a sleep of 2s, at least the recommendation, still had errors)."
	if got := sweepSentence(s, "en"); got != want {
		t.Errorf("sentence:\n%s\nwant\n%s", got, want)
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, rep, "en"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(md.String(), "### Errors against preStop sleep\n\n"+want) || !strings.Contains(md.String(), "| 4s | 3 | 0 | 0.00% [0.00%, 0.00%] |") {
		t.Errorf("markdown:\n%s", md.String())
	}
	var js bytes.Buffer
	if err := WriteJSON(&js, rep); err != nil {
		t.Fatal(err)
	}
	var back Contents
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Sweep == nil || *back.Sweep.SmallestClean != plan.Duration(4*time.Second) {
		t.Errorf("report.json sweep: %v %+v", err, back.Sweep)
	}
	p, err := SweepPlot(rep, s)
	if err != nil {
		t.Fatal(err)
	}
	var svg bytes.Buffer
	if err := WritePlot(&svg, p, "svg"); err != nil {
		t.Fatal(err)
	}
	golden(t, "sweep.svg", svg.Bytes())
	var html bytes.Buffer
	if err := WriteHTML(&html, rep, "en", HTMLDocument{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(html.String(), `<figure class="chart sweep"`) || !strings.Contains(html.String(), "they disagree") {
		t.Error("report.html lacks the sweep")
	}
	// The recommendation judged against what the sweep tried: between the failing 2 s and the clean 4 s nothing was
	// tried; from 4 s up every sleep was clean; a clean sleep below a failing one does not make a short one right.
	for _, c := range []struct {
		recommended time.Duration
		errorsAt4s  uint64
		agrees      string
		says        string
	}{
		{3 * time.Second, 0, "nil", "this sweep cannot tell (the recommendation is longer than every sleep with errors"},
		{4 * time.Second, 0, "true", "they agree"},
		{6 * time.Second, 0, "true", "they agree"},
		{3 * time.Second, 2, "false", "they disagree (a sleep of 4s"},
		{6 * time.Second, 2, "nil", "this sweep cannot tell (the recommendation is longer than every swept sleep)"},
	} {
		r := sweepFixture()
		r.ServiceOut.RecommendedPreStop = plan.Duration(c.recommended)
		for i := range r.Runs {
			if r.Runs[i].Conditions.PreStopSleep == plan.Duration(4*time.Second) && r.Runs[i].Run == "1" {
				r.Runs[i].Whole.Errors = c.errorsAt4s
			}
		}
		s := analysis.SweepOf(r.Report)
		agrees := "nil"
		if s.Agrees != nil {
			agrees = fmt.Sprint(*s.Agrees)
		}
		if agrees != c.agrees || !strings.Contains(sweepSentence(s, "en"), c.says) || sweepSentence(s, "ja") == "" {
			t.Errorf("recommended %s, %d errors at 4 s: agrees %s, %q", c.recommended, c.errorsAt4s, agrees, sweepSentence(s, "en"))
		}
	}
	// A plan whose cases differ in more than the sleep is no sweep.
	if analysis.SweepOf(fixtureReport().Report) != nil {
		t.Error("the reference fixture (graceful and immediate) taken for a sweep")
	}
}
