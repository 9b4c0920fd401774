package cli

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rollout-lab/rollout-lab/check"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/report"
)

// buildShutdownApp builds testdata/shutdownapp, the small server with a chosen reaction to SIGTERM.
func buildShutdownApp(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shutdownapp")
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/shutdownapp").CombinedOutput(); err != nil {
		t.Fatalf("build shutdownapp: %v\n%s", err, out)
	}
	return bin
}

// runCheck runs `runner check` on an app and returns its exit code and verdicts by behaviour.
func runCheck(t *testing.T, args ...string) (int, map[string]check.Verdict, string) {
	code, verdicts, out, _ := runCheckReport(t, args...)
	return code, verdicts, out
}

// runCheckReport is runCheck that also returns the report.
func runCheckReport(t *testing.T, args ...string) (int, map[string]check.Verdict, string, report.Contents) {
	t.Helper()
	results := t.TempDir()
	code, out, errOut := run(t, append([]string{"check", "--results", results}, args...)...)
	t.Logf("runner check %s: exit %d\n%s", strings.Join(args, " "), code, out)
	matches, _ := filepath.Glob(filepath.Join(results, "check", "*"))
	if len(matches) != 1 {
		t.Fatalf("no results directory (exit %d)\n%s\n%s", code, out, errOut)
	}
	rep, err := readReport(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]check.Verdict{}
	for _, v := range rep.Verdicts {
		verdicts[v.Behaviour] = v
	}
	if len(verdicts) != len(check.Behaviours) {
		t.Fatalf("verdicts %+v", rep.Verdicts)
	}
	for _, file := range []string{"report.md", "report.html"} {
		data, err := os.ReadFile(filepath.Join(matches[0], file))
		if err != nil || !strings.Contains(string(data), "Does it exit in time?") {
			t.Errorf("%s lacks the verdicts: %v", file, err)
		}
	}
	return code, verdicts, out, rep
}

func expectVerdicts(t *testing.T, app string, verdicts map[string]check.Verdict, want map[string]bool) {
	t.Helper()
	for behaviour, ok := range want {
		result := check.ResultFail
		if ok {
			result = check.ResultPass
		}
		if v := verdicts[behaviour]; v.Result != result {
			t.Errorf("%s: %s %s (%s), want %s", app, v.Mark(), behaviour, v.Figure, result)
		}
	}
}

// inFlightAtSIGTERM sums what the in-flight case's first run had in flight at its SIGTERMs.
func inFlightAtSIGTERM(rep report.Contents) (n uint64) {
	for _, r := range rep.Runs {
		if r.Case == check.CaseInFlight {
			for _, p := range r.InFlight {
				n += p.AtSIGTERM
			}
			return n
		}
	}
	return 0
}

// Three apps, three reactions to SIGTERM, the verdicts the physics implies: the graceful one (keeps accepting
// while the proxies let go, stops keep-alive, finishes what it started, exits 0) passes; the one that dies at
// SIGTERM refuses and cuts; the one that ignores SIGTERM needs SIGKILL.
func TestCheckJudgesShutdownBehaviours(t *testing.T) {
	testenv.RequireRoot(t)
	app := buildShutdownApp(t)

	code, verdicts, out := runCheck(t, "--port", "9000", "--", app, "--listen", ":9000", "--mode", "graceful")
	if code != ExitOK || !strings.Contains(out, "✓ Does it finish what it started?") {
		t.Errorf("graceful app: exit %d, want %d", code, ExitOK)
	}
	expectVerdicts(t, "graceful", verdicts, map[string]bool{check.KeepsAccepting: true, check.FinishesInFlight: true, check.ClosesIdle: true, check.ExitsInTime: true})

	code, verdicts, _ = runCheck(t, "--port", "9000", "--", app, "--listen", ":9000", "--mode", "immediate")
	if code != ExitExpectationFailed {
		t.Errorf("immediate app: exit %d, want %d", code, ExitExpectationFailed)
	}
	expectVerdicts(t, "immediate", verdicts, map[string]bool{check.KeepsAccepting: false, check.FinishesInFlight: false, check.ExitsInTime: true})

	code, verdicts, _ = runCheck(t, "--port", "9000", "--grace", "4s", "--", app, "--listen", ":9000", "--mode", "stubborn")
	if code != ExitExpectationFailed {
		t.Errorf("stubborn app: exit %d, want %d", code, ExitExpectationFailed)
	}
	expectVerdicts(t, "stubborn", verdicts, map[string]bool{check.KeepsAccepting: true, check.ExitsInTime: false})
	if v := verdicts[check.ExitsInTime]; !strings.Contains(v.Figure, "SIGKILL needed") || strings.Contains(v.Figure, "SIGKILL needed 0 ") {
		t.Errorf("stubborn app's exit: %s", v.Figure)
	}
}

// The project's cowweb at a light load (--slow --load 640: about 5 ms a request) gets the verdicts its shutdown
// implies, with requests in flight at SIGTERM in both runs (the in-flight case's rate comes from Little's law):
// graceful finishes them and exits on its own, immediate cuts them; neither keeps accepting after SIGTERM (its
// listener closes then).
func TestCheckJudgesCowwebShutdownModes(t *testing.T) {
	testenv.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "cowweb")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cowweb").CombinedOutput(); err != nil {
		t.Fatalf("build cowweb: %v\n%s", err, out)
	}
	for _, tc := range []struct {
		shutdown string
		finishes bool
	}{{"graceful", true}, {"immediate", false}} {
		code, verdicts, _, rep := runCheckReport(t, "--path", "/say?m=check", "--health", "/health", "--", bin, "serve", "--port=8080", "--slow", "--load=640", "--shutdown="+tc.shutdown)
		if code != ExitExpectationFailed {
			t.Errorf("%s cowweb: exit %d, want %d (it closes its listener at SIGTERM)", tc.shutdown, code, ExitExpectationFailed)
		}
		expectVerdicts(t, tc.shutdown+" cowweb", verdicts, map[string]bool{check.KeepsAccepting: false, check.FinishesInFlight: tc.finishes, check.ExitsInTime: true})
		if n := inFlightAtSIGTERM(rep); n == 0 {
			t.Errorf("%s cowweb: nothing in flight at SIGTERM: %s", tc.shutdown, verdicts[check.FinishesInFlight].Figure)
		}
		if v := verdicts[check.ExitsInTime]; tc.finishes && (!strings.Contains(v.Figure, "exit codes ") || strings.Contains(v.Figure, "×143")) {
			t.Errorf("graceful cowweb exits: %s", v.Figure)
		}
	}
}

// A server that exits at once on SIGTERM but answers at once (< 1 ms) leaves nothing in flight to cut at a light
// rate: finishes-in-flight is –, not ✓; --expect exercised makes that a failure. (A request may still arrive in
// the moment between SIGTERM and the exit: then it is cut, and the verdict is ✗, exercised.)
func TestCheckSaysWhatItCouldNotExercise(t *testing.T) {
	testenv.RequireRoot(t)
	app := buildShutdownApp(t)
	_, verdicts, out, _ := runCheckReport(t, "--port", "9000", "--max-rate", "20", "--expect", "exercised", "--", app, "--listen", ":9000", "--mode", "immediate", "--work", "0")
	v := verdicts[check.FinishesInFlight]
	if v.Result != check.ResultFail || !strings.Contains(out, "✗ Does it finish what it started?") {
		t.Errorf("an app that exits at once: %s %+v", v.Mark(), v)
	}
	if v.NotExercised == "" && !strings.Contains(v.Figure, "cut by the exit") {
		t.Errorf("neither exercised nor said not to be: %s", v.Figure)
	}
	t.Logf("finishes-in-flight: %s (not exercised: %q)", v.Figure, v.NotExercised)
}

func readReport(dir string) (report.Contents, error) {
	var rep report.Contents
	data, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		return rep, err
	}
	return rep, json.Unmarshal(data, &rep)
}
