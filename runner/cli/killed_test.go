package cli

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// A runner killed with SIGKILL during the load writes nothing more, but what Prometheus stored up to then is the
// run: `runner report` shows it, marked interrupted, from the stored samples.
func TestKilledRunnerStillReports(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "moo") })}
	go server.Serve(ln)
	defer server.Close()

	root := t.TempDir()
	child := exec.Command(os.Args[0], "attack", "--url", "http://"+ln.Addr().String()+"/", "--rate", "50", "--duration", "60s",
		"--results", root)
	child.Env = append(os.Environ(), childRunnerEnv+"=1")
	child.Stdout, child.Stderr = os.Stderr, os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()

	// Kill it a few scrapes into its load, once run.json says the run began.
	var dir string
	for deadline := time.Now().Add(30 * time.Second); dir == ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the child never began its run")
		}
		matches, _ := filepath.Glob(filepath.Join(root, "*", "*", rundir.ManifestFile))
		for _, m := range matches {
			if data, err := os.ReadFile(m); err == nil && strings.Contains(string(data), `"inProgress": true`) {
				dir = filepath.Dir(m)
			}
		}
	}
	time.Sleep(4 * time.Second)
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()

	code, out, errOut := run(t, "report", dir)
	if code != ExitOK {
		t.Fatalf("report of the killed run: exit %d\n%s\n%s", code, out, errOut)
	}
	data, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep analysis.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Partial || len(rep.Runs) != 1 || !rep.Runs[0].Interrupted {
		t.Fatalf("report of the killed run: partial %v, %d runs %+v", rep.Partial, len(rep.Runs), rep.Runs)
	}
	// About 4 s at 50/s were sent; the last scrape before the kill holds most of them.
	if total := rep.Runs[0].Whole.Total; total < 50 || total > 400 {
		t.Errorf("the killed run shows %d requests, want the ~200 sent before the kill", total)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil || !strings.Contains(string(md), "(interrupted)") {
		t.Errorf("report.md does not mark the run interrupted: %v\n%s", err, md)
	}
	t.Logf("killed run: %d requests in the report", rep.Runs[0].Whole.Total)
}
