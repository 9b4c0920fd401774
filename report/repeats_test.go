package report

import (
	"bytes"
	"math"
	"testing"

	"github.com/rollout-lab/rollout-lab/analysis"
)

// repeatedReport is the fixture's first two cases run three times each, with different error counts per run.
func repeatedReport() Contents {
	base := fixtureReport()
	var runs []analysis.CaseRun
	for i, errs := range []uint64{30, 39, 48} {
		for _, r := range base.Runs[:2] {
			r.Run = string(rune('1' + i))
			if r.Case == "cowweb-ru-gs" {
				r.Whole.Errors = errs
				r.Whole.ErrorRate = float64(errs) / float64(r.Whole.Total)
				r.Whole.P99Ms = 40 + float64(i)*10
			}
			runs = append(runs, r)
		}
	}
	base.Runs = runs
	return completed(base.Report)
}

func TestSummarizeGivesMeanRangeAndStudentsInterval(t *testing.T) {
	s := analysis.Summarize(repeatedReport().Runs)
	if len(s) != 2 || s[0].Case != "cowweb-ru-gs" || s[0].Runs != 3 || s[1].Runs != 3 {
		t.Fatalf("summaries %+v", s)
	}
	gs := s[0]
	if gs.Errors != (analysis.Spread{Mean: 39, Min: 30, Max: 48}) || gs.P99Ms != (analysis.Spread{Mean: 50, Min: 40, Max: 60}) {
		t.Errorf("errors %+v p99 %+v", gs.Errors, gs.P99Ms)
	}
	// Rates 30, 39, 48 of 24060: sd = 9/24060, t(0.975, 2) = 4.3027, half width = 4.3027·sd/√3.
	mean, half := 39.0/24060, 4.302652729911275*9/24060/math.Sqrt(3)
	if gs.ErrorRateCI95 == nil || math.Abs(gs.ErrorRateCI95[0]-(mean-half)) > 1e-9 || math.Abs(gs.ErrorRateCI95[1]-(mean+half)) > 1e-9 {
		t.Errorf("interval %v, want [%g, %g]", gs.ErrorRateCI95, mean-half, mean+half)
	}
	if slp := s[1]; slp.ErrorRateCI95 == nil || *slp.ErrorRateCI95 != [2]float64{0, 0} || slp.Errors.Max != 0 {
		t.Errorf("no errors in any run: %+v", slp)
	}
	if analysis.Summarize(fixtureReport().Runs) != nil {
		t.Error("single runs summarized")
	}
}

func TestRepeatsMarkdownGolden(t *testing.T) {
	for _, lang := range Languages {
		var md bytes.Buffer
		if err := WriteMarkdown(&md, repeatedReport(), lang); err != nil {
			t.Fatal(err)
		}
		golden(t, "repeats."+lang+".md", md.Bytes())
	}
}
