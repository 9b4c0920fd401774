package kubelet

import (
	"context"
	"net"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"k8s.io/kubernetes/pkg/apis/core/v1/helper/qos"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/timeline"
)

// podWorker runs one Pod: its network, its containers, their probes, and its termination.
type podWorker struct {
	agent     *Agent
	pod       *corev1.Pod // as first seen; spec does not change
	key       string
	ip        net.IP
	started   time.Time
	mu        sync.Mutex
	ctrs      []*containerRunner
	ready     bool
	terminate chan *corev1.Pod // the Pod with its deletion, or nil for at once
	termOnce  sync.Once
	killed    chan struct{}
	killOnce  sync.Once
	home      string // the Pod's private directory: HOME and the default working directory
}

func newPodWorker(a *Agent, pod *corev1.Pod) *podWorker {
	return &podWorker{agent: a, pod: pod.DeepCopy(), key: pod.Namespace + "/" + pod.Name,
		terminate: make(chan *corev1.Pod, 1), killed: make(chan struct{})}
}

func (w *podWorker) record(eventType string, container string, mutate func(*timeline.Event)) {
	e := timeline.Event{Type: eventType, Namespace: w.pod.Namespace, Pod: w.pod.Name, UID: string(w.pod.UID), Node: w.pod.Spec.NodeName,
		PodIP: podIPString(w.ip), Container: container}
	if mutate != nil {
		mutate(&e)
	}
	w.agent.Events.Record(e)
}

func (w *podWorker) requestTermination(pod *corev1.Pod) {
	w.termOnce.Do(func() { w.terminate <- pod })
}

// kill ends everything at once (agent stop).
func (w *podWorker) kill() {
	w.killOnce.Do(func() { close(w.killed) })
	w.requestTermination(nil)
}

func (w *podWorker) run() {
	w.started = time.Now()
	w.record(timeline.EventPodCreated, "", nil)
	ip, err := w.agent.opts.Network.Setup(w.key, w.pod.Spec.NodeName)
	if err != nil {
		w.agent.logger.Error("pod network", "pod", w.key, "err", err)
		w.updateStatus()
		<-w.terminate
		w.remove()
		return
	}
	w.ip = ip
	// One directory per Pod, owned by the first container's user (a Pod's containers share a user in practice).
	owner := identity{}
	if len(w.pod.Spec.Containers) > 0 {
		owner, _ = containerIdentity(w.pod, w.pod.Spec.Containers[0])
	}
	if w.home, err = w.agent.files.home(w.pod, owner); err != nil {
		w.agent.logger.Error("pod directory", "pod", w.key, "err", err)
	}
	ctx, stopProbes := context.WithCancel(w.agent.ctx)
	for _, spec := range w.pod.Spec.Containers {
		c := &containerRunner{spec: spec, startupOK: spec.StartupProbe == nil}
		w.ctrs = append(w.ctrs, c)
		w.startContainer(c)
	}
	w.updateStatus()
	for _, c := range w.ctrs {
		go w.supervise(ctx, c)
		go w.probeLoop(ctx, c)
	}
	deleted := <-w.terminate
	stopProbes()
	w.shutdown(deleted)
	w.remove()
}

func (s *probeState) observe(ok bool) (changed bool) {
	if ok {
		s.successes++
		s.failure = 0
		if !s.result && s.successes >= max(s.probe.SuccessThreshold, 1) {
			s.result = true
			return true
		}
		return false
	}
	s.failure++
	s.successes = 0
	if s.result && s.failure >= max(s.probe.FailureThreshold, 1) {
		s.result = false
		return true
	}
	return false
}

// updateStatus writes the Pod's status as a kubelet reports it: every condition and container state the API
// shows, built in one place so they always agree.
func (w *podWorker) updateStatus() {
	w.mu.Lock()
	podReady := w.ready
	w.mu.Unlock()
	hostIP := w.agent.opts.Network.NodeIP(w.pod.Spec.NodeName).String()
	status := corev1.PodStatus{Phase: corev1.PodRunning, HostIP: hostIP, HostIPs: []corev1.HostIP{{IP: hostIP}},
		StartTime: ptrTime(w.started), QOSClass: qos.GetPodQOS(w.pod)}
	if w.ip == nil {
		status.Phase = corev1.PodPending
	} else {
		status.PodIP = w.ip.String()
		status.PodIPs = []corev1.PodIP{{IP: w.ip.String()}}
	}
	allRunning := w.ip != nil
	allTerminated, allSucceeded := len(w.ctrs) > 0, true
	for _, c := range w.ctrs {
		cs := w.containerStatus(c)
		allRunning = allRunning && cs.State.Running != nil
		allTerminated = allTerminated && cs.State.Terminated != nil
		allSucceeded = allSucceeded && (cs.State.Terminated == nil || cs.State.Terminated.ExitCode == 0)
		status.ContainerStatuses = append(status.ContainerStatuses, cs)
	}
	// A Pod whose containers all ended and will not be restarted is done, as the kubelet reports it (Jobs count on it).
	if policy := w.pod.Spec.RestartPolicy; allTerminated && (policy == corev1.RestartPolicyNever || policy == corev1.RestartPolicyOnFailure && allSucceeded) {
		status.Phase = corev1.PodFailed
		if allSucceeded {
			status.Phase = corev1.PodSucceeded
		}
	}
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
	}
	status.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, w.ip != nil), cond(corev1.PodInitialized, true),
		cond(corev1.ContainersReady, podReady && allRunning), cond(corev1.PodReady, podReady && allRunning), cond(corev1.PodScheduled, true),
	}
	w.writeStatus(status)
}

// containerStatus is a container's status as the kubelet reports it: waiting, running or terminated (with its
// last termination after a restart).
func (w *podWorker) containerStatus(c *containerRunner) corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: c.spec.Image, RestartCount: c.restarts,
		Ready: c.ready, Started: ptr.To(c.startupOK && c.exited != nil), ContainerID: "rollout-lab://" + w.key + "/" + c.spec.Name}
	if c.exited != nil {
		select {
		case <-c.exited:
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: int32(c.exitCode), Reason: exitReason(c.exitCode), StartedAt: metav1.NewTime(c.startedAt), FinishedAt: metav1.Now()}
			cs.Ready = false
		default:
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
		}
	} else {
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
	}
	if c.lastState != nil {
		cs.LastTerminationState.Terminated = c.lastState
	}
	return cs
}

// writeStatus writes the Pod's status, keeping the transition times of conditions that did not change; a Pod
// replaced by another of the same name is left alone.
func (w *podWorker) writeStatus(status corev1.PodStatus) {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		current, err := w.agent.client.CoreV1().Pods(w.pod.Namespace).Get(context.Background(), w.pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if current.UID != w.pod.UID {
			return nil
		}
		// Keep transition times of conditions that did not change.
		for i, c := range status.Conditions {
			for _, old := range current.Status.Conditions {
				if old.Type == c.Type && old.Status == c.Status {
					status.Conditions[i].LastTransitionTime = old.LastTransitionTime
				}
			}
		}
		current.Status = status
		_, err = w.agent.client.CoreV1().Pods(w.pod.Namespace).UpdateStatus(context.Background(), current, metav1.UpdateOptions{})
		return err
	})
	if err != nil && !apierrors.IsNotFound(err) {
		w.agent.logger.Warn("pod status", "pod", w.key, "err", err)
	}
}

// remove tears down the network and deletes the Pod object with grace period 0, as the kubelet does at the end.
func (w *podWorker) remove() {
	if err := w.agent.opts.Network.Teardown(w.key); err != nil {
		w.agent.logger.Warn("pod network teardown", "pod", w.key, "err", err)
	}
	if cg := w.agent.opts.Cgroups; cg != nil {
		if err := cg.RemovePod(w.pod.Spec.NodeName, string(w.pod.UID)); err != nil {
			w.agent.logger.Warn("pod cgroup", "pod", w.key, "err", err)
		}
	}
	if err := w.agent.files.removeHome(w.pod); err != nil {
		w.agent.logger.Warn("pod directory", "pod", w.key, "err", err)
	}
	select {
	case <-w.killed:
		return // the agent is stopping: the Pod object stays for the next agent or for cleanup
	default:
	}
	err := w.agent.client.CoreV1().Pods(w.pod.Namespace).Delete(context.Background(), w.pod.Name,
		metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0), Preconditions: &metav1.Preconditions{UID: &w.pod.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.agent.logger.Warn("pod delete", "pod", w.key, "err", err)
	}
	w.record(timeline.EventPodRemoved, "", nil)
}
