package clusterwatch

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// A Pod's life through the API, as a cluster shows it: each change recorded once, in order; the runner's own
// workers and the Pods that existed before the watch began are not news.
func TestWatchPodsRecordsEachChangeOnce(t *testing.T) {
	existing := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "before", Namespace: "app", UID: "u0"}}
	client := fake.NewClientset(existing)
	var mu sync.Mutex
	var got []string
	record := func(e timeline.Event) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, e.Pod+" "+e.Type)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := WatchPods(ctx, client, "app", record); err != nil {
		t.Fatal(err)
	}
	pods := client.CoreV1().Pods("app")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "app", UID: "u1"}, Spec: corev1.PodSpec{NodeName: "n1"}}
	worker := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "load", Namespace: "app", UID: "u2", Labels: map[string]string{"app.kubernetes.io/name": WorkerLabel}}}
	steps := []func() error{
		func() error { _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); return err },
		func() error { _, err := pods.Create(ctx, worker, metav1.CreateOptions{}); return err },
		func() error {
			pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
			_, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
			return err
		},
		func() error { _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); return err }, // nothing new
		func() error {
			now := metav1.Now()
			pod.DeletionTimestamp = &now
			pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 143}}}}
			_, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
			return err
		},
		func() error {
			_, err := client.CoreV1().Events("app").Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "k", Namespace: "app"},
				InvolvedObject: corev1.ObjectReference{Kind: "Pod", Name: "web", UID: "u1"}, Reason: "Killing"}, metav1.CreateOptions{})
			return err
		},
		func() error { return pods.Delete(ctx, "web", metav1.DeleteOptions{}) },
		func() error { return pods.Delete(ctx, "load", metav1.DeleteOptions{}) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"web " + timeline.EventPodCreated, "web " + timeline.EventPodReady, "web " + timeline.EventDeletionSeen,
		"web " + timeline.EventContainerExited, "web " + timeline.EventKilling, "web " + timeline.EventPodRemoved}
	testenv.Eventually(t, "the Pod's life recorded", 10*time.Second, func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= len(want), nil
	})
	time.Sleep(200 * time.Millisecond) // anything recorded twice would show now
	mu.Lock()
	defer mu.Unlock()
	// The Killing event comes from another informer: its place among the Pod's own changes is not fixed.
	pod0 := slices.DeleteFunc(slices.Clone(got), func(s string) bool { return s == "web "+timeline.EventKilling })
	wantPod := slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == "web "+timeline.EventKilling })
	if !slices.Equal(pod0, wantPod) || len(got) != len(want) || !slices.Contains(got, "web "+timeline.EventKilling) {
		t.Errorf("recorded %v, want %v", got, want)
	}
}
