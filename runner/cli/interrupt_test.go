package cli

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

const interruptPlan = `
name: interrupt
lab: {nodes: 2}
app:
  replicas: 2
  load: 50
  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}
  terminationGracePeriod: 10s
load: {rate: 20, duration: 10s, timeout: 5s}
rollout: {at: 2s, timeout: 60s}
cases:
  - name: first
  - name: second
    app: {preStop: {sleep: 1s}}
report: {lang: en}
`

// syncBuffer is a log sink written by the apply's goroutines and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type applyRun struct {
	result experiment.ApplyResult
	err    error
	logs   string
	phases []string // case/phase in the order they began
}

// applyUntil runs the plan and cancels it (Ctrl-C) `after` into the first time the case enters the phase.
func applyUntil(t *testing.T, planFile, resultsRoot, resume, caseName, phase string, after time.Duration) applyRun {
	t.Helper()
	p, err := plan.LoadFile(planFile)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	var run applyRun
	var mu sync.Mutex
	var once sync.Once
	run.result, run.err = experiment.Apply(ctx, experiment.ApplyConfig{
		Config: experiment.Config{Plan: p, PlanSource: planFile, ResultsRoot: resultsRoot, ResumeDir: resume,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))},
		Cowweb: []string{self, CowwebSubcommand},
		Progress: func(c string, _ int, ph string, pr load.Progress) {
			if pr.Planned != 0 {
				return
			}
			mu.Lock()
			run.phases = append(run.phases, c+"/"+ph)
			mu.Unlock()
			if ph == phase && (c == caseName || phase == experiment.PhaseReport) {
				once.Do(func() { time.AfterFunc(after, cancel) })
			}
		},
	})
	run.logs = logs.String()
	return run
}

// listeningPorts are the TCP ports this process listens on, from its socket descriptors and /proc/net/tcp{,6}.
func listeningPorts(t *testing.T) map[string]bool {
	t.Helper()
	inodes := map[string]bool{}
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	ports := map[string]bool{}
	for _, table := range []string{"/proc/self/net/tcp", "/proc/self/net/tcp6"} {
		data, err := os.ReadFile(table)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 9 && f[3] == "0A" && inodes[f[9]] { // 0A: LISTEN
				ports[f[1]] = true
			}
		}
	}
	return ports
}

// assertNothingLeft checks what an interrupted apply must have removed, and what it must have kept.
func assertNothingLeft(t *testing.T, run applyRun, before map[string]bool, tmp string) {
	t.Helper()
	if left, err := cni.Namespaces(os.Getpid()); err != nil || len(left) > 0 {
		t.Errorf("network namespaces left: %v %v", left, err)
	}
	if _, err := net.InterfaceByName(cni.BridgeName(os.Getpid())); err == nil {
		t.Errorf("bridge %s left", cni.BridgeName(os.Getpid()))
	}
	if children := childProcesses(t); len(children) > 0 {
		t.Errorf("processes left: %v", children)
	}
	for port := range listeningPorts(t) {
		if !before[port] {
			t.Errorf("still listening on %s", port)
		}
	}
	if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
		t.Errorf("temporary files left: %v", entries)
	}
	if run.result.Dir == "" {
		t.Fatalf("no results directory: %v", run.err)
	}
	m, err := rundir.Load(run.result.Dir)
	if err != nil || !m.Partial || !run.result.Partial {
		t.Errorf("results %s: partial %v (result %v), %v", run.result.Dir, m != nil && m.Partial, run.result.Partial, err)
	}
	md, err := os.ReadFile(filepath.Join(run.result.Dir, "report.md"))
	if err != nil || !bytes.Contains(md, []byte("This run was interrupted")) {
		t.Errorf("report.md: %v\n%s", err, md)
	}
	if _, err := os.Stat(filepath.Join(run.result.Dir, "lab")); !os.IsNotExist(err) {
		t.Errorf("the lab's keys are in the results: %v", err)
	}
}

// childProcesses are this process's living children (the lab's Pods are).
func childProcesses(t *testing.T) []string {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []string
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after its closing parenthesis.
		rest := string(data[bytes.LastIndexByte(data, ')')+1:])
		f := strings.Fields(rest)
		if len(f) > 1 && f[1] == fmt.Sprint(os.Getpid()) && f[0] != "Z" {
			out = append(out, p)
		}
	}
	return out
}

// An interrupt in any phase stops the load, uninstalls the release, stops the lab and Prometheus, and leaves a
// readable results directory marked partial; --resume then runs only what had not finished.
func TestApplyInterruptedInEveryPhaseLeavesNothing(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	planFile := filepath.Join(dir, "interrupt.yaml")
	if err := os.WriteFile(planFile, []byte(interruptPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", tmp)
	before := listeningPorts(t)
	for _, tc := range []struct {
		phase      string
		after      time.Duration
		uninstalls bool // whether a release surely existed to uninstall
	}{
		{experiment.PhaseInstall, 1500 * time.Millisecond, false},
		{experiment.PhaseWarmUp, time.Second, true},
		{experiment.PhaseRollout, time.Second, true},
		{experiment.PhaseDrain, 500 * time.Millisecond, true},
		{experiment.PhaseReport, 0, true},
	} {
		t.Run(tc.phase, func(t *testing.T) {
			run := applyUntil(t, planFile, filepath.Join(dir, "results-"+tc.phase), "", "first", tc.phase, tc.after)
			if run.err == nil || !strings.Contains(run.err.Error(), "interrupted") {
				t.Errorf("apply returned %v, want an interruption", run.err)
			}
			if tc.uninstalls && !strings.Contains(run.logs, "msg=uninstalled") {
				t.Errorf("the release was not uninstalled: %s", run.logs)
			}
			if tc.phase != experiment.PhaseReport && slices.Contains(run.phases, "second/"+experiment.PhaseInstall) {
				t.Errorf("the next case started after the interrupt: %v", run.phases)
			}
			assertNothingLeft(t, run, before, tmp)
		})
	}

	t.Run("resume", func(t *testing.T) {
		results := filepath.Join(dir, "results-resume")
		first := applyUntil(t, planFile, results, "", "second", experiment.PhaseRollout, time.Second)
		assertNothingLeft(t, first, before, tmp)
		m, err := rundir.Load(first.result.Dir)
		if err != nil || len(m.Runs) != 2 || m.Runs[0].Summary.Stopped || !m.Runs[1].Summary.Stopped {
			t.Fatalf("before the resume: %v %+v", err, m)
		}
		resumed := applyUntil(t, planFile, "", first.result.Dir, "", "none", 0)
		if resumed.err != nil || resumed.result.Partial || resumed.result.Dir != first.result.Dir {
			t.Fatalf("resume: %v, partial %v, dir %s", resumed.err, resumed.result.Partial, resumed.result.Dir)
		}
		if slices.Contains(resumed.phases, "first/"+experiment.PhaseInstall) || !slices.Contains(resumed.phases, "second/"+experiment.PhaseInstall) {
			t.Errorf("resume ran %v, want only the second case", resumed.phases)
		}
		m, err = rundir.Load(first.result.Dir)
		if err != nil || m.Partial || len(m.Runs) != 2 || len(m.Resumed) != 1 {
			t.Fatalf("after the resume: %v %+v", err, m)
		}
		for _, r := range m.Runs {
			if r.Summary.Stopped || r.Summary.Completed != 200 {
				t.Errorf("%s: stopped %v, completed %d of 200", r.Labels.Case, r.Summary.Stopped, r.Summary.Completed)
			}
		}
		// The interrupted attempt's samples are gone: Prometheus counts exactly the rerun.
		md, err := os.ReadFile(filepath.Join(first.result.Dir, "report.md"))
		if err != nil || !bytes.Contains(md, []byte("| Total requests | 200 | 200 |")) || bytes.Contains(md, []byte("interrupted")) {
			t.Errorf("report.md after the resume: %v\n%s", err, md)
		}
		if _, err := experiment.Regenerate(context.Background(), first.result.Dir, "", ""); err != nil {
			t.Errorf("runner report on the resumed run: %v", err)
		}
		again := applyUntil(t, planFile, "", first.result.Dir, "", "none", 0)
		if again.err == nil || !strings.Contains(again.err.Error(), "nothing to resume") {
			t.Errorf("resuming a finished run: %v", again.err)
		}
	})
}
