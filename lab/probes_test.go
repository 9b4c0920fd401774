package lab

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Startup (tcpSocket), readiness (exec) and liveness (httpGet) probes, the restart back-off, and the native sleep
// and httpGet preStop hooks, on the real lab.
func TestProbesRestartsAndHooks(t *testing.T) {
	requireRoot(t)
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
	ctr.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "test -n \"$POD_IP\""}}},
		PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1}
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
	for _, d := range []*appsv1.Deployment{probed, dying, sleeper, getter} {
		if _, err := c.Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, app := range []string{"probed", "sleeper", "getter"} {
		eventually(t, app+" Ready", 30*time.Second, func(ctx context.Context) (bool, error) {
			pods, err := readyPods(ctx, l, "default", app)
			return len(pods) == 1, err
		})
	}
	pods, _ := readyPods(ctx, l, "default", "probed")
	if s := pods[0].Status.ContainerStatuses[0]; s.Started == nil || !*s.Started || !s.Ready {
		t.Errorf("probed: started %v ready %v", s.Started, s.Ready)
	}
	eventually(t, "dying restarted once after its liveness failures", 30*time.Second, func(ctx context.Context) (bool, error) {
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
			if e.Type == EventPodRemoved && (app == "sleeper" || app == "getter") {
				exits++
			}
		case <-deadline:
			t.Fatalf("hooks did not run: %v", steps)
		}
	}
	if d := steps["sleeper"][EventPreStopEnd] - steps["sleeper"][EventPreStopStart]; d < 1900*time.Millisecond || d > 2500*time.Millisecond {
		t.Errorf("native sleep 2 s took %v", d)
	}
	if d := steps["getter"][EventPreStopEnd] - steps["getter"][EventPreStopStart]; d < 0 || d > time.Second {
		t.Errorf("httpGet hook took %v", d)
	}
	for _, app := range []string{"sleeper", "getter"} {
		if gap := steps[app][EventSIGTERM] - steps[app][EventPreStopEnd]; gap < 0 || gap > 100*time.Millisecond {
			t.Errorf("%s: SIGTERM %v after the hook", app, gap)
		}
	}
}

// Leftovers of a lab whose process died (a namespace with a process in it, the bridge) go at the next start;
// those of a lab still running stay.
func TestStaleNetworkOfDeadLabsIsRemoved(t *testing.T) {
	requireRoot(t)
	dead := 4194300 // above any pid this machine hands out
	ns := fmt.Sprintf("%s%d-1", netnsPrefix, dead)
	if err := ipCommand("netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	if err := ipCommand("link", "add", BridgeName(dead), "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("ip", "netns", "exec", ns, "sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	n, err := NewNetnsNetwork()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if left, _ := Namespaces(dead); len(left) > 0 {
		t.Errorf("stale namespaces left: %v", left)
	}
	if _, err := net.InterfaceByName(BridgeName(dead)); err == nil {
		t.Errorf("stale bridge %s left", BridgeName(dead))
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Error("the process in the stale namespace still runs")
	}
	if _, err := net.InterfaceByName(n.Bridge); err != nil {
		t.Errorf("this lab's bridge: %v", err)
	}
}
