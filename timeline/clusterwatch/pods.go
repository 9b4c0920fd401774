package clusterwatch

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/rollout-lab/rollout-lab/timeline"
)

// WorkerLabel names the runner's own in-cluster load Pods (app.kubernetes.io/name), whose lives are not the app's.
const WorkerLabel = "rollout-lab-worker"

// isWorker tells the runner's own load Pods from the app's.
func isWorker(p *corev1.Pod) bool { return p.Labels["app.kubernetes.io/name"] == WorkerLabel }

// podSeen is what a podWatcher last saw of a Pod.
type podSeen struct {
	ready, deleting bool
	exited          map[string]bool
}

// podWatcher turns Pod changes and the kubelet's Events into timeline events, each once: the Pod and Event
// informers' handlers share what was already recorded.
type podWatcher struct {
	record func(timeline.Event)
	mu     sync.Mutex
	seen   map[string]*podSeen
}

func podEvent(p *corev1.Pod, eventType string) timeline.Event {
	return timeline.Event{Type: eventType, Namespace: p.Namespace, Pod: p.Name, UID: string(p.UID), Node: p.Spec.NodeName, PodIP: p.Status.PodIP}
}

// observe records what changed in a Pod since it was last seen: created (not for the informer's initial list),
// ready or not, deletion, each container's exit.
func (w *podWatcher) observe(p *corev1.Pod, initial bool) {
	if isWorker(p) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s, known := w.seen[string(p.UID)]
	if !known {
		s = &podSeen{exited: map[string]bool{}}
		w.seen[string(p.UID)] = s
		if !initial {
			w.record(podEvent(p, timeline.EventPodCreated))
		}
	}
	ready := false
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	switch {
	case ready && !s.ready && !initial:
		w.record(podEvent(p, timeline.EventPodReady))
	case !ready && s.ready && p.DeletionTimestamp == nil:
		w.record(podEvent(p, timeline.EventPodNotReady))
	}
	s.ready = ready
	if p.DeletionTimestamp != nil && !s.deleting {
		s.deleting = true
		w.record(podEvent(p, timeline.EventDeletionSeen))
	}
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil && !s.exited[cs.Name] {
			s.exited[cs.Name] = true
			e := podEvent(p, timeline.EventContainerExited)
			code := int(t.ExitCode)
			e.Container, e.ExitCode, e.Message = cs.Name, &code, t.Reason
			w.record(e)
		}
	}
}

// removed records a Pod gone from the API.
func (w *podWatcher) removed(obj any) {
	p, ok := Deleted(obj).(*corev1.Pod)
	if !ok || isWorker(p) {
		return
	}
	w.mu.Lock()
	delete(w.seen, string(p.UID))
	w.mu.Unlock()
	w.record(podEvent(p, timeline.EventPodRemoved))
}

// killing records the kubelet's Killing event of a Pod (preStop, then SIGTERM, begin): a cluster's only word on it.
func (w *podWatcher) killing(obj any, initial bool) {
	e, ok := obj.(*corev1.Event)
	if !ok || initial || e.InvolvedObject.Kind != "Pod" || e.Reason != "Killing" {
		return
	}
	w.record(timeline.Event{Type: timeline.EventKilling, Namespace: e.Namespace, Pod: e.InvolvedObject.Name, UID: string(e.InvolvedObject.UID),
		Message: e.Message})
}

// WatchPods records the namespace's Pods' lives as the API shows them (created, ready, not ready, deletion,
// container exits, removal; the runner's own worker Pods left out) and the kubelet's Killing events. It returns once
// both informers have synced.
func WatchPods(ctx context.Context, client kubernetes.Interface, namespace string, record func(timeline.Event)) error {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace))
	w := &podWatcher{record: record, seen: map[string]*podSeen{}}
	pods := factory.Core().V1().Pods().Informer()
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{
		AddFunc:    func(obj any, initial bool) { w.observe(obj.(*corev1.Pod), initial) },
		UpdateFunc: func(_, obj any) { w.observe(obj.(*corev1.Pod), false) },
		DeleteFunc: w.removed,
	}); err != nil {
		return err
	}
	kubeEvents := factory.Core().V1().Events().Informer()
	if _, err := kubeEvents.AddEventHandler(cache.ResourceEventHandlerDetailedFuncs{AddFunc: w.killing}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), pods.HasSynced, kubeEvents.HasSynced) {
		return fmt.Errorf("watch Pods and Events in %s: not synced", namespace)
	}
	return nil
}
