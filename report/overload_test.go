package report

import (
	"bytes"
	"strings"
	"testing"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// A run whose app fell behind its arrivals is flagged whatever held it up: here the machine was far from busy and
// no node or Pod was throttled, as when the reference knob's locked random source stalls the Pods.
func TestSaturationNamesAnOverloadedApp(t *testing.T) {
	quiet := func(p50, warmUpP50 float64) analysis.CaseRun {
		r := fixtureReport().Runs[0]
		r.Lateness = &analysis.Lateness{P99Ms: 1, MaxMs: 2}
		busy, none := 0.378, 0.0
		r.CPU = &analysis.CPUUse{MachineBusy: &busy, NodeThrottled: &none, NodeThrottledName: "lab-node-1"}
		r.Whole.P50Ms = p50
		r.WarmUp = &analysis.Outcome{Total: 3000, OK: 3000, P50Ms: warmUpP50}
		r.InFlight = []rundir.PodInFlight{{Pod: "a", AtSIGTERM: 2000}, {Pod: "b", AtSIGTERM: 781}}
		return r
	}
	for _, tc := range []struct {
		name            string
		p50, warmUp     float64
		wantOverloaded  bool
		wantSentenceHas string
	}{
		{"collapsed: 30 s against 20 ms", 30000, 20, true, "median latency 30000.0 ms over the load against 20.0 ms in the warm-up"},
		{"a rollout's bump", 21, 20, false, ""},
		{"ten times but a few ms", 90, 9, false, ""},
		{"a hundred ms more but not ten times", 400, 100, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := quiet(tc.p50, tc.warmUp)
			if got := r.Overloaded(); got != tc.wantOverloaded {
				t.Fatalf("Overloaded() = %v, want %v", got, tc.wantOverloaded)
			}
			reasons := strings.Join(saturationReasons(r, "en"), "; ")
			if !tc.wantOverloaded {
				if reasons != "" {
					t.Fatalf("flagged: %s", reasons)
				}
				return
			}
			for _, want := range []string{tc.wantSentenceHas, "2781 requests in flight at SIGTERM (up to 2000 in one Pod)"} {
				if !strings.Contains(reasons, want) {
					t.Errorf("reasons %q lack %q", reasons, want)
				}
			}
			if ja := strings.Join(saturationReasons(r, "ja"), "、"); !strings.Contains(ja, "アプリが到着に追いつかなかった") || !strings.Contains(ja, "SIGTERM 時の処理中リクエスト 2781") {
				t.Errorf("Japanese reasons %q do not name the overload", ja)
			}
			rep := fixtureReport()
			rep.Runs = []analysis.CaseRun{r}
			var b bytes.Buffer
			if err := WriteMarkdown(&b, rep, "en"); err != nil {
				t.Fatal(err)
			}
			md := b.String()
			if !strings.Contains(md, "⚠ Saturated: in cowweb-ru-gs the app fell behind its arrivals") {
				t.Errorf("no saturation sentence naming the overload under the table:\n%s", md)
			}
			if !strings.Contains(md, "30000.0 ⚠") {
				t.Errorf("the p50 cell is not marked:\n%s", md)
			}
			if !strings.Contains(md, "| 37.8% / 0% / - |") || strings.Contains(md, "CPU ran short") {
				t.Errorf("the CPU is blamed for an overload it did not cause:\n%s", md)
			}
		})
	}
}
