package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Main(context.Background(), args, Streams{Out: &out, Err: &errOut})
	return code, out.String(), errOut.String()
}

func TestValidateAcceptsTheShippedPlans(t *testing.T) {
	files, _ := filepath.Glob("../../plans/*.yaml")
	code, out, errOut := run(t, append([]string{"validate"}, files...)...)
	if code != ExitOK || errOut != "" {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"l640-rep8-rps200.yaml: ok, plan l640-rep8-rps200, 3 case(s), 24060 request(s)", "l1024-rep8-rps100.yaml: ok, plan l1024-rep8-rps100, 2 case(s), 12060 request(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestValidateReportsEveryBadPlan(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: bad\nload: {rate: 0, duration: 10s}\napp: {replicas: 0}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "validate", "../../plans/quick.yaml", bad, filepath.Join(dir, "missing.yaml"))
	if code != ExitError {
		t.Errorf("exit %d, want %d", code, ExitError)
	}
	for _, want := range []string{bad + ":2:14: load.rate: must be more than 0", bad + ":3:17: app.replicas: must be at least 1", "missing.yaml: no such file", "2 of 3 plan(s) invalid"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
	if !strings.Contains(out, "quick.yaml: ok") {
		t.Errorf("stdout: %s", out)
	}
}

func TestPlanShowsResolvedCasesWithRequestCounts(t *testing.T) {
	code, out, errOut := run(t, "plan", "../../plans/l1024-rep8-rps100.yaml")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(out, "\n")
	var rows []string
	for _, l := range lines {
		if strings.HasPrefix(l, "cowweb-") {
			rows = append(rows, strings.Join(strings.Fields(l), " "))
		}
	}
	want := []string{
		"cowweb-ru-slp8 8 1024 immediate sh sleep 8s 1m0s 1→100(1m0s)→100(1m0s)→1(1m0s) 3m0s 12060 1m5s -",
		"cowweb-ru-gs-slp8 8 1024 graceful sh sleep 8s 1m0s 1→100(1m0s)→100(1m0s)→1(1m0s) 3m0s 12060 1m5s -",
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(rows, "\n"), strings.Join(want, "\n"))
	}
}

func TestPlanOutputsYAMLJSONAndValues(t *testing.T) {
	_, out, _ := run(t, "plan", "-o", "json", "../../plans/sweep-prestop.yaml")
	var resolved struct {
		Cases []struct {
			Name     string `json:"name"`
			Requests int64  `json:"requests"`
		} `json:"cases"`
	}
	if err := json.Unmarshal([]byte(out), &resolved); err != nil || len(resolved.Cases) != 5 || resolved.Cases[2].Name != "gs-slp4s" || resolved.Cases[2].Requests != 9030 {
		t.Errorf("json %v: %+v", err, resolved)
	}
	_, out, _ = run(t, "plan", "-o", "yaml", "../../plans/quick.yaml")
	var y map[string]any
	if err := yaml.Unmarshal([]byte(out), &y); err != nil || y["name"] != "quick" {
		t.Errorf("yaml %v: %v", err, y["name"])
	}
	_, out, _ = run(t, "plan", "-o", "values", "../../plans/quick.yaml")
	dec := yaml.NewDecoder(strings.NewReader(out))
	var sleeps []int
	for {
		var values struct {
			PreStop struct {
				SleepSeconds int `yaml:"sleepSeconds"`
			} `yaml:"preStop"`
		}
		if dec.Decode(&values) != nil {
			break
		}
		sleeps = append(sleeps, values.PreStop.SleepSeconds)
	}
	if len(sleeps) != 2 || sleeps[0] != 0 || sleeps[1] != 3 {
		t.Errorf("values documents: preStop sleeps %v\n%s", sleeps, out)
	}
	if code, _, errOut := run(t, "plan", "-o", "xml", "../../plans/quick.yaml"); code != ExitError || !strings.Contains(errOut, `--output "xml"`) {
		t.Errorf("bad output flag: %d %s", code, errOut)
	}
}

func TestVersionAndUsageErrors(t *testing.T) {
	code, out, _ := run(t, "version")
	if code != ExitOK || !strings.HasPrefix(out, "rollout-lab runner dev (go") {
		t.Errorf("version: %d %q", code, out)
	}
	// --version prints the version, not the help, and no flag of a Kubernetes component leaks into the help.
	if code, out, _ := run(t, "--version"); code != ExitOK || !strings.HasPrefix(out, "rollout-lab runner dev ") {
		t.Errorf("--version: %d %q", code, out)
	}
	if _, out, _ := run(t, "--help"); strings.Contains(out, "sets the reported version") || strings.Contains(out, "version[=true]") {
		t.Errorf("a component's flag in the runner's help:\n%s", out)
	}
	if code, _, errOut := run(t, "plan"); code != ExitError || !strings.Contains(errOut, "accepts 1 arg") {
		t.Errorf("plan without args: %d %q", code, errOut)
	}
	if code, _, errOut := run(t, "frobnicate"); code != ExitError || !strings.Contains(errOut, "unknown command") {
		t.Errorf("unknown command: %d %q", code, errOut)
	}
}

// Flags are laid over the plan before validation: the same rule judges --load-url as load.url, and says which.
func TestFlagsAreValidatedAsThePlansOwnFields(t *testing.T) {
	quick := filepath.Join("..", "..", "plans", "quick.yaml")
	code, _, errOut := run(t, "apply", quick, "--target", "kubernetes", "--context", "c", "--load-url", "http://h/x", "--yes")
	if code != ExitError || !strings.Contains(errOut, "load.url (--load-url): want scheme://host[:port]") {
		t.Errorf("--load-url with a path: %d %q", code, errOut)
	}
	code, _, errOut = run(t, "apply", quick, "--load-url", "http://h")
	if code != ExitError || !strings.Contains(errOut, "load.url (--load-url): only with target kind kubernetes") {
		t.Errorf("--load-url on the lab: %d %q", code, errOut)
	}
}
