package lab

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Startup (tcpSocket), readiness (exec) and liveness (httpGet) probes, the restart back-off, and the native sleep
// and httpGet preStop hooks, on the real lab.
func TestProbesRestartsAndHooks(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 1, Cowweb: []string{cowwebBinary}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Down()
	events, unsubscribe := l.Agent.Events.Subscribe(10000)
	defer unsubscribe()
	c := l.Client.AppsV1().Deployments("default")

	// Started by a tcpSocket startup probe, ready by an exec readiness probe.
	probed := cowwebDeployment("probed", 1, 0, "graceful")
	ctr := &probed.Spec.Template.Spec.Containers[0]
	ctr.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}},
		PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 10}
	// The probe runs as the container's user, with its private home; the app binary sits in a directory only root
	// can enter, so the agent stages it.
	ctr.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c",
		`test -n "$POD_IP" && test "$(id -u):$(id -g)" = 1000:1001 && test -w "$HOME" && test "$PWD" = "$HOME"`}}},
		PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1}
	probed.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), RunAsGroup: ptr.To[int64](1001)}
	// runAsNonRoot without a user would run as root: the kubelet refuses to start it.
	rootless := cowwebDeployment("rootless", 1, 0, "graceful")
	rootless.Spec.Template.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}
	// Killed by a failing liveness probe, then restarted after the kubelet's 10 s back-off.
	dying := cowwebDeployment("dying", 1, 0, "graceful")
	dying.Spec.Template.Spec.Containers[0].LivenessProbe = &corev1.Probe{
		ProbeHandler:        corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/not-found", Port: intstr.FromString("http")}},
		InitialDelaySeconds: 1, PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1}
	// Terminated through the native sleep action and through an httpGet hook.
	sleeper := cowwebDeployment("sleeper", 1, 0, "graceful")
	sleeper.Spec.Template.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 2}}}
	getter := cowwebDeployment("getter", 1, 0, "graceful")
	getter.Spec.Template.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{
		HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromString("http")}}}
	for _, d := range []*appsv1.Deployment{probed, dying, sleeper, getter, rootless} {
		if _, err := c.Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, app := range []string{"probed", "sleeper", "getter"} {
		testenv.Eventually(t, app+" Ready", 30*time.Second, func(ctx context.Context) (bool, error) {
			pods, err := readyPods(ctx, l, "default", app)
			return len(pods) == 1, err
		})
	}
	pods, _ := readyPods(ctx, l, "default", "probed")
	if s := pods[0].Status.ContainerStatuses[0]; s.Started == nil || !*s.Started || !s.Ready {
		t.Errorf("probed: started %v ready %v", s.Started, s.Ready)
	}
	testenv.Eventually(t, "rootless refused as the kubelet does", 30*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := l.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=rootless"})
		if err != nil || len(pods.Items) != 1 || len(pods.Items[0].Status.ContainerStatuses) != 1 {
			return false, err
		}
		w := pods.Items[0].Status.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "CreateContainerConfigError" && strings.Contains(w.Message, "runAsNonRoot"), nil
	})
	testenv.Eventually(t, "dying restarted once after its liveness failures", 30*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := l.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=dying"})
		if err != nil || len(pods.Items) != 1 || len(pods.Items[0].Status.ContainerStatuses) != 1 {
			return false, err
		}
		s := pods.Items[0].Status.ContainerStatuses[0]
		return s.RestartCount >= 1 && s.LastTerminationState.Terminated != nil, nil
	})

	for _, app := range []string{"sleeper", "getter"} {
		pods, err := readyPods(ctx, l, "default", app)
		if err != nil || len(pods) != 1 {
			t.Fatalf("%s: %v %v", app, pods, err)
		}
		if err := l.Client.CoreV1().Pods("default").Delete(ctx, pods[0].Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	steps := map[string]map[string]time.Duration{}
	exits := 0
	deadline := time.After(20 * time.Second)
	for exits < 2 {
		select {
		case e := <-events:
			app, _, _ := strings.Cut(e.Pod, "-")
			if steps[app] == nil {
				steps[app] = map[string]time.Duration{}
			}
			steps[app][e.Type] = e.Since
			if e.Type == timeline.EventPodRemoved && (app == "sleeper" || app == "getter") {
				exits++
			}
		case <-deadline:
			t.Fatalf("hooks did not run: %v", steps)
		}
	}
	if d := steps["sleeper"][timeline.EventPreStopEnd] - steps["sleeper"][timeline.EventPreStopStart]; d < 1900*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("native sleep 2 s took %v", d)
	}
	if d := steps["getter"][timeline.EventPreStopEnd] - steps["getter"][timeline.EventPreStopStart]; d < 0 || d > time.Second {
		t.Errorf("httpGet hook took %v", d)
	}
	for _, app := range []string{"sleeper", "getter"} {
		if gap := steps[app][timeline.EventSIGTERM] - steps[app][timeline.EventPreStopEnd]; gap < 0 || gap > 100*time.Millisecond {
			t.Errorf("%s: SIGTERM %v after the hook", app, gap)
		}
	}
}
