package lab

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// A plan that runs the upstream image maps it to a binary that behaves as cowweb-go v1.1.1: here the project's
// cowweb built in its upstream flavour. Two replicas roll over; the old Pods, told not to shut down gracefully,
// exit with v1.1.1's status 0 (the project's cowweb dies of SIGTERM: 143).
func TestUpstreamImageRollsOverAsV111(t *testing.T) {
	testenv.RequireRoot(t)
	upstream := filepath.Join(t.TempDir(), "cowweb-v1.1.1")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/rollout-lab/rollout-lab/cowweb/app.Flavor=upstream", "-o", upstream, "../cowweb")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx := context.Background()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 2, Cowweb: []string{cowwebBinary},
		Images: map[string][]string{"ghcr.io/hhiroshell/cowweb-go/cowweb": {upstream}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Down()
	events, unsubscribe := l.Agent.Events.Subscribe(10000)
	defer unsubscribe()
	if _, err := l.Client.AppsV1().Deployments("default").Create(ctx, cowwebDeployment("upstream", 2, 0, "immediate"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "2 upstream Pods Ready", 60*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := readyPods(ctx, l, "default", "upstream")
		return len(pods) == 2, err
	})
	old, _ := readyPods(ctx, l, "default", "upstream")
	oldUIDs := map[string]bool{}
	for _, p := range old {
		oldUIDs[string(p.UID)] = true
	}
	if err := restart(ctx, l, "default", "upstream"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "2 new Pods Ready", 60*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := readyPods(ctx, l, "default", "upstream")
		fresh := 0
		for _, p := range pods {
			if !oldUIDs[string(p.UID)] {
				fresh++
			}
		}
		return fresh == 2, err
	})
	exits := map[string]int{}
	deadline := time.After(30 * time.Second)
	for len(exits) < 2 {
		select {
		case e := <-events:
			if e.Type == timeline.EventSIGKILL && oldUIDs[e.UID] {
				t.Errorf("old Pod %s needed SIGKILL", e.Pod)
			}
			if e.Type == timeline.EventContainerExited && oldUIDs[e.UID] && e.ExitCode != nil {
				exits[e.Pod] = *e.ExitCode
			}
		case <-deadline:
			t.Fatalf("old Pods' exits: %v", exits)
		}
	}
	for pod, code := range exits {
		if code != 0 {
			t.Errorf("old Pod %s exited %d, want v1.1.1's 0", pod, code)
		}
	}
}
