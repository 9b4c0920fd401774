package experiment

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/kube"
	kubefake "helm.sh/helm/v3/pkg/kube/fake"
	"helm.sh/helm/v3/pkg/storage"
	"helm.sh/helm/v3/pkg/storage/driver"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// fakeTarget is a Target without a cluster: client-go's fake clientset holds the Deployment, Helm keeps its releases
// in memory and applies nothing (as Helm's own action tests do), and an in-process HTTP server plays the app.
type fakeTarget struct {
	client  *fake.Clientset
	helm    *action.Configuration
	app     *httptest.Server
	failing atomic.Bool // the app answers 503
	closed  atomic.Bool
}

// newFakeTarget makes a fake target whose rollouts complete or not, and whose installs' wait for Ready fails with
// installError (Helm's fake client applies no manifest, so a failed install shows as its wait failing).
func newFakeTarget(t *testing.T, namespace string, rolloutCompletes bool, installError error) *fakeTarget {
	t.Helper()
	status := appsv1.DeploymentStatus{Replicas: 2, UpdatedReplicas: 2, ReadyReplicas: 2, AvailableReplicas: 2}
	if !rolloutCompletes {
		status.UpdatedReplicas = 1 // one new Pod never comes up
	}
	deployment := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: ReleaseName, Namespace: namespace},
		Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2)}, Status: status}
	f := &fakeTarget{client: fake.NewClientset(deployment)}
	f.helm = &action.Configuration{Releases: storage.Init(driver.NewMemory()),
		KubeClient:   &neverReadyKubeClient{PrintingKubeClient: kubefake.PrintingKubeClient{Out: io.Discard}, err: installError},
		Capabilities: chartutil.DefaultCapabilities, Log: func(string, ...any) {}}
	f.app = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.failing.Load() {
			http.Error(w, "unavailable", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "moo\n")
	}))
	t.Cleanup(f.app.Close)
	return f
}

// neverReadyKubeClient applies nothing, and when err is set its wait for Ready fails (deletes still complete).
type neverReadyKubeClient struct {
	kubefake.PrintingKubeClient
	err error
}

func (c *neverReadyKubeClient) Wait(resources kube.ResourceList, timeout time.Duration) error {
	if c.err != nil {
		return c.err
	}
	return c.PrintingKubeClient.Wait(resources, timeout)
}

func (c *neverReadyKubeClient) WaitWithJobs(resources kube.ResourceList, timeout time.Duration) error {
	return c.Wait(resources, timeout)
}

func (f *fakeTarget) Provenance() map[string]string { return map[string]string{"kind": "fake"} }
func (f *fakeTarget) Helm(string, *slog.Logger) (*action.Configuration, error) {
	return f.helm, nil
}
func (f *fakeTarget) Client() kubernetes.Interface { return f.client }
func (f *fakeTarget) WaitServing(context.Context, string, string, int, int, plan.Case) error {
	return nil
}
func (f *fakeTarget) LoadPath(c plan.Case, _, _ string, _ int) LoadPath {
	return LoadPath{URL: f.app.URL + c.Load.Path, Description: "straight to the fake app", DescriptionJa: "フェイクのアプリへ直接"}
}
func (f *fakeTarget) Record(_ context.Context, _ string, observe func(timeline.Event)) (func() []timeline.Event, error) {
	events := []timeline.Event{{Type: timeline.EventDeletionSeen, Pod: "cowweb-old", UID: "old", Time: time.Now()}}
	for _, e := range events {
		if observe != nil {
			observe(e)
		}
	}
	return func() []timeline.Event { return events }, nil
}
func (f *fakeTarget) Close() error { f.closed.Store(true); return nil }

// released says whether Helm still holds a deployed release of the app.
func (f *fakeTarget) released(t *testing.T) bool {
	t.Helper()
	last, err := f.helm.Releases.Last(ReleaseName)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return last.Info.Status == "deployed"
}

const orchestrationPlan = `
name: fake
app: {replicas: 2, probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}}
load: {rate: 20, duration: 2s, timeout: 1s, connection: pooled}
rollout: {at: 500ms, timeout: 2s}
cases:
  - name: first
  - name: second
    expect: {maxErrors: 0}
`

type applyRun struct {
	result ApplyResult
	err    error
	phases []string
	target *fakeTarget
}

// applyFake runs the plan against a fake target; interruptAt ("case/phase") cancels the apply when that phase
// begins, after a short while in it.
func applyFake(t *testing.T, target *fakeTarget, resultsRoot, resumeDir, interruptAt string) applyRun {
	t.Helper()
	dir := t.TempDir()
	planFile := filepath.Join(dir, "fake.yaml")
	if err := os.WriteFile(planFile, []byte(orchestrationPlan), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := plan.LoadFile(planFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	run := applyRun{target: target}
	run.result, run.err = Apply(ctx, ApplyConfig{
		Config: Config{Plan: p, PlanSource: planFile, ResultsRoot: resultsRoot, ScrapeInterval: 200 * time.Millisecond,
			MetricsListen: "127.0.0.1:0", ResumeDir: resumeDir},
		Connect: func(context.Context, TargetInputs) (Target, error) { return target, nil },
		Progress: func(caseName string, _ int, phase string, pr load.Progress) {
			if pr.Planned != 0 {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			step := caseName + "/" + phase
			if caseName == "" {
				step = phase
			}
			run.phases = append(run.phases, step)
			switch {
			case step == interruptAt && phase == PhaseReport:
				cancel() // the reports take well under the delay below
			case step == interruptAt:
				time.AfterFunc(300*time.Millisecond, cancel)
			}
		},
	})
	return run
}

// The apply's orchestration without a cluster or root: what it does when all goes well, when the install fails,
// when the rollout never completes, when it is interrupted in each phase, and when an interrupted run resumes.
func TestApplyOrchestration(t *testing.T) {
	t.Run("complete", func(t *testing.T) {
		target := newFakeTarget(t, "fake", true, nil)
		run := applyFake(t, target, t.TempDir(), "", "")
		if run.err != nil || run.result.Partial || run.result.ExpectationsFailed {
			t.Fatalf("apply: %v %+v", run.err, run.result)
		}
		want := []string{"first/install", "first/warm-up", "first/rollout", "first/drain", "second/install", "second/warm-up",
			"second/rollout", "second/drain", "report"}
		if !slices.Equal(run.phases, want) {
			t.Errorf("phases %v, want %v", run.phases, want)
		}
		m, err := rundir.Load(run.result.Dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Runs) != 2 || m.Runs[0].Summary.Sent != 40 || m.Runs[1].Summary.ByClass[load.ClassNone] != 40 {
			t.Fatalf("runs %+v", m.Runs)
		}
		// What the release installed, read from its rendered Deployment, is in the run's record.
		if in := m.Runs[0].Installed; in == nil || in.Replicas != 2 || in.PreStopAction != "none" {
			t.Errorf("installed %+v", in)
		}
		for _, file := range []string{"report.md", "report.json", filepath.Join("cases", "first", "run-1", "events.json")} {
			if _, err := os.Stat(filepath.Join(run.result.Dir, file)); err != nil {
				t.Error(err)
			}
		}
		// The report says the way the target sent the load, in the report's language and in the other.
		for file, want := range map[string]string{"report.md": "負荷の経路: フェイクのアプリへ直接。", "report.en.md": "Load path: straight to the fake app."} {
			data, err := os.ReadFile(filepath.Join(run.result.Dir, file))
			if err != nil || !strings.Contains(string(data), want) {
				t.Errorf("%s lacks %q (%v)", file, want, err)
			}
		}
		// The restart patched the Deployment as kubectl does.
		d, err := target.client.AppsV1().Deployments("fake").Get(context.Background(), ReleaseName, metav1.GetOptions{})
		if err != nil || d.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] == "" {
			t.Errorf("no restartedAt annotation: %v %v", err, d.Spec.Template.Annotations)
		}
		assertCleanedUp(t, target)
	})

	t.Run("expectations broken", func(t *testing.T) {
		target := newFakeTarget(t, "fake", true, nil)
		target.failing.Store(true)
		run := applyFake(t, target, t.TempDir(), "", "")
		if run.err != nil || run.result.Partial || !run.result.ExpectationsFailed {
			t.Fatalf("apply: %v %+v, want the expectation broken", run.err, run.result)
		}
		assertCleanedUp(t, target)
	})

	t.Run("install fails", func(t *testing.T) {
		target := newFakeTarget(t, "fake", true, errors.New("timed out waiting for the condition"))
		run := applyFake(t, target, t.TempDir(), "", "")
		if run.err == nil || !strings.Contains(run.err.Error(), "helm install") || !strings.Contains(run.err.Error(), "timed out waiting") || !run.result.Partial {
			t.Fatalf("apply: %v %+v", run.err, run.result)
		}
		if slices.Contains(run.phases, "first/warm-up") {
			t.Errorf("load started after a failed install: %v", run.phases)
		}
		assertCleanedUp(t, target)
	})

	t.Run("rollout never completes", func(t *testing.T) {
		target := newFakeTarget(t, "fake", false, nil)
		start := time.Now()
		run := applyFake(t, target, t.TempDir(), "", "")
		if run.err == nil || !strings.Contains(run.err.Error(), "rollout") || !run.result.Partial {
			t.Fatalf("apply: %v %+v", run.err, run.result)
		}
		if slices.Contains(run.phases, "second/install") {
			t.Errorf("the next case ran after a failed rollout: %v", run.phases)
		}
		if elapsed := time.Since(start); elapsed > time.Minute {
			t.Errorf("took %s", elapsed)
		}
		assertCleanedUp(t, target)
	})

	for _, phase := range []string{"first/install", "first/warm-up", "first/rollout", "first/drain", "report"} {
		t.Run("interrupted in "+phase, func(t *testing.T) {
			target := newFakeTarget(t, "fake", true, nil)
			run := applyFake(t, target, t.TempDir(), "", phase)
			if phase == "report" {
				// The reports finish, marked partial.
				if run.result.Dir == "" || !run.result.Partial {
					t.Fatalf("apply: %v %+v", run.err, run.result)
				}
			} else if run.err == nil || !strings.Contains(run.err.Error(), "interrupted") || !run.result.Partial {
				t.Fatalf("apply: %v %+v, want an interruption", run.err, run.result)
			}
			if phase != "report" && slices.Contains(run.phases, "second/install") {
				t.Errorf("the next case started after the interrupt: %v", run.phases)
			}
			m, err := rundir.Load(run.result.Dir)
			if err != nil || !m.Partial {
				t.Errorf("results: %v, partial %v", err, m != nil && m.Partial)
			}
			assertCleanedUp(t, target)
		})
	}

	t.Run("resume", func(t *testing.T) {
		root := t.TempDir()
		first := applyFake(t, newFakeTarget(t, "fake", true, nil), root, "", "second/warm-up")
		if !first.result.Partial {
			t.Fatalf("first apply: %v %+v", first.err, first.result)
		}
		target := newFakeTarget(t, "fake", true, nil)
		resumed := applyFake(t, target, root, first.result.Dir, "")
		if resumed.err != nil || resumed.result.Partial || resumed.result.Dir != first.result.Dir {
			t.Fatalf("resume: %v %+v", resumed.err, resumed.result)
		}
		if slices.Contains(resumed.phases, "first/install") || !slices.Contains(resumed.phases, "second/install") {
			t.Errorf("resume ran %v, want only the unfinished case", resumed.phases)
		}
		m, err := rundir.Load(resumed.result.Dir)
		if err != nil || m.Partial || len(m.Runs) != 2 {
			t.Fatalf("resumed results: %v %+v", err, m)
		}
		assertCleanedUp(t, target)
	})

	// A runner killed during a case's load leaves that run recorded as in progress: the report shows it from the
	// stored samples, interrupted, and a resume runs it again in its place.
	t.Run("resume after a kill", func(t *testing.T) {
		root := t.TempDir()
		first := applyFake(t, newFakeTarget(t, "fake", true, nil), root, "", "second/rollout")
		m, err := rundir.Load(first.result.Dir)
		if err != nil || len(m.Runs) != 2 {
			t.Fatalf("first apply: %v %+v", err, m)
		}
		// What SIGKILL leaves: the run as BeginRun recorded it, no end.
		m.Runs[1] = rundir.RunRecord{Labels: m.Runs[1].Labels, Summary: load.Summary{Stopped: true}, Drain: m.Runs[1].Drain, InProgress: true}
		m.Finished = time.Time{}
		if err := m.Save(first.result.Dir); err != nil {
			t.Fatal(err)
		}
		rep, err := Regenerate(context.Background(), first.result.Dir, "", "")
		if err != nil || len(rep.Runs) != 2 || !rep.Runs[1].Interrupted || rep.Runs[1].Whole.Total == 0 {
			t.Fatalf("report of the killed apply: %v %+v", err, rep.Runs)
		}
		target := newFakeTarget(t, "fake", true, nil)
		resumed := applyFake(t, target, root, first.result.Dir, "")
		if resumed.err != nil || resumed.result.Partial || !slices.Contains(resumed.phases, "second/install") {
			t.Fatalf("resume: %v %+v %v", resumed.err, resumed.result, resumed.phases)
		}
		m, err = rundir.Load(resumed.result.Dir)
		if err != nil || m.Partial || len(m.Runs) != 2 || m.Runs[1].InProgress || m.Runs[1].Summary.Stopped {
			t.Fatalf("resumed results: %v %+v", err, m.Runs)
		}
		assertCleanedUp(t, target)
	})
}

// assertCleanedUp checks that the apply undid what it did: the release uninstalled, the namespace it created
// deleted, the target closed.
func assertCleanedUp(t *testing.T, target *fakeTarget) {
	t.Helper()
	if target.released(t) {
		t.Error("the release is still installed")
	}
	if _, err := target.client.CoreV1().Namespaces().Get(context.Background(), "fake", metav1.GetOptions{}); err == nil {
		t.Error("the namespace the apply created is left")
	}
	if !target.closed.Load() {
		t.Error("the target was not closed")
	}
}
