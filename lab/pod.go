package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"k8s.io/kubernetes/pkg/apis/core/v1/helper/qos"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// minKillDelay is what the kubelet grants after SIGTERM when the preStop hook used up the grace period.
const minKillDelay = 2 * time.Second

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

type containerRunner struct {
	spec        corev1.Container
	mu          sync.Mutex
	cmd         *exec.Cmd
	exited      chan struct{}
	exitCode    int
	signal      string
	startedAt   time.Time
	restarts    int32
	ready       bool
	startupOK   bool
	lastState   *corev1.ContainerStateTerminated
	waitReason  string
	waitMessage string
	cgroup      string // the container's cgroup, relative to the lab's; empty without CPU accounting
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
	ip, err := w.agent.opts.Network.Setup(w.key)
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

func (w *podWorker) env(c corev1.Container) []string {
	values := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := values[k]; !ok {
			order = append(order, k)
		}
		values[k] = v
	}
	field := map[string]string{"status.podIP": podIPString(w.ip), "status.podIPs": podIPString(w.ip), "metadata.name": w.pod.Name,
		"metadata.namespace": w.pod.Namespace, "metadata.uid": string(w.pod.UID), "spec.nodeName": w.pod.Spec.NodeName,
		"status.hostIP": w.agent.opts.Network.HostIP().String(), "spec.serviceAccountName": w.pod.Spec.ServiceAccountName}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.FieldRef != nil:
			set(e.Name, field[e.ValueFrom.FieldRef.FieldPath])
		case e.ValueFrom != nil:
			// Secrets, ConfigMaps and resources are not modelled; the variable is left empty, as the docs say.
			set(e.Name, "")
		default:
			// $(VAR) refers to variables defined before this one, as the kubelet expands them.
			set(e.Name, expansion.Expand(e.Value, expansion.MappingFuncFor(values)))
		}
	}
	out := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + w.home, "HOSTNAME=" + w.pod.Name}
	for _, k := range order {
		out = append(out, k+"="+values[k])
	}
	return out
}

// command makes the process that runs argv in the Pod's network as the container's user (see security.go).
func (w *podWorker) command(c corev1.Container, argv []string) (*exec.Cmd, error) {
	id, err := containerIdentity(w.pod, c)
	if err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %s: empty command", c.Name)
	}
	argv = slices.Clone(argv)
	if id.uid != 0 {
		if argv[0], err = w.agent.files.executable(argv[0]); err != nil {
			return nil, err
		}
	}
	cmd, err := w.agent.opts.Network.Command(w.key, id.wrap(w.agent.setpriv, argv))
	if err != nil {
		return nil, err
	}
	cmd.Env = w.env(c)
	cmd.Dir = c.WorkingDir
	if cmd.Dir == "" {
		cmd.Dir = w.home
	}
	cmd.SysProcAttr = podProcAttr()
	return cmd, nil
}

func (w *podWorker) startContainer(c *containerRunner) {
	waitReason := "CreateContainerError"
	argv, err := w.agent.resolveArgv(c.spec)
	if err == nil {
		mapping := expansion.MappingFuncFor(envMap(w.env(c.spec)))
		for i := range argv {
			argv[i] = expansion.Expand(argv[i], mapping)
		}
		if _, idErr := containerIdentity(w.pod, c.spec); idErr != nil {
			err, waitReason = idErr, "CreateContainerConfigError"
		}
	}
	var cmd *exec.Cmd
	if err == nil {
		cmd, err = w.command(c.spec, argv)
	}
	if err == nil && w.agent.opts.Cgroups != nil && c.cgroup == "" {
		c.cgroup, err = w.agent.opts.Cgroups.AddContainer(containerCPU(w.pod, c.spec))
	}
	var logFile *os.File
	if err == nil {
		logFile, err = os.OpenFile(filepath.Join(w.agent.opts.StateDir, "logs", fmt.Sprintf("%s_%s_%s.log", w.pod.Namespace, w.pod.Name, c.spec.Name)),
			os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	}
	if err == nil {
		out := &appLogWriter{file: logFile, onEvent: func(event string, at time.Time) {
			if event == timeline.EventListenerClosed {
				w.record(timeline.EventListenerClosed, c.spec.Name, func(e *timeline.Event) { e.Time = at })
			}
		}}
		cmd.Stdout, cmd.Stderr = out, out
		// A process it started that keeps the pipe open must not hold the container's exit.
		cmd.WaitDelay = time.Second
		err = cmd.Start()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if logFile != nil {
			logFile.Close()
		}
		c.waitReason, c.waitMessage = waitReason, err.Error()
		w.agent.logger.Warn("container", "pod", w.key, "container", c.spec.Name, "err", err)
		return
	}
	w.place(c, cmd.Process.Pid)
	c.cmd, c.exited, c.startedAt, c.ready = cmd, make(chan struct{}), time.Now(), false
	c.waitReason, c.waitMessage = "", ""
	exited := c.exited
	go func() {
		err := cmd.Wait()
		logFile.Close()
		c.mu.Lock()
		c.exitCode, c.signal = exitStatus(cmd, err)
		c.mu.Unlock()
		close(exited)
	}()
	w.record(timeline.EventContainerStart, c.spec.Name, func(e *timeline.Event) { e.Message = fmt.Sprintf("pid %d", cmd.Process.Pid) })
}

// place moves a process of the container into the container's cgroup.
func (w *podWorker) place(c *containerRunner, pid int) {
	if c.cgroup == "" {
		return
	}
	if err := w.agent.opts.Cgroups.Place(c.cgroup, pid); err != nil {
		w.agent.logger.Warn("container cgroup", "pod", w.key, "container", c.spec.Name, "err", err)
	}
}

// appLogWriter writes a container's output to its log file and passes on the lifecycle events the app logs as JSON
// lines with an "event" and its time "at" (cowweb does): what only the app knows, such as when it closed its listener.
type appLogWriter struct {
	file    *os.File
	onEvent func(event string, at time.Time)
	partial []byte
}

func (l *appLogWriter) Write(p []byte) (int, error) {
	n, err := l.file.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.scan(l.partial[:i])
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > 64<<10 { // a line that long is no event of interest
		l.partial = l.partial[:0]
	}
	return n, err
}

func (l *appLogWriter) scan(line []byte) {
	if !bytes.HasPrefix(line, []byte("{")) || !bytes.Contains(line, []byte(`"event"`)) {
		return
	}
	var record struct {
		Event string    `json:"event"`
		At    time.Time `json:"at"`
	}
	if json.Unmarshal(line, &record) == nil && record.Event != "" && !record.At.IsZero() {
		l.onEvent(record.Event, record.At)
	}
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		for i := 0; i < len(kv); i++ {
			if kv[i] == '=' {
				m[kv[:i]] = kv[i+1:]
				break
			}
		}
	}
	return m
}

func exitStatus(cmd *exec.Cmd, err error) (int, string) {
	if cmd.ProcessState == nil {
		return -1, ""
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), ws.Signal().String()
	}
	return cmd.ProcessState.ExitCode(), ""
}

// supervise restarts a container that exits while the Pod runs, with the kubelet's back-off (10 s doubling to 5 min).
func (w *podWorker) supervise(ctx context.Context, c *containerRunner) {
	backoff := 10 * time.Second
	for {
		c.mu.Lock()
		exited := c.exited
		c.mu.Unlock()
		if exited == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-exited:
		}
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		code, signal := c.exitCode, c.signal
		c.lastState = &corev1.ContainerStateTerminated{ExitCode: int32(code), Signal: 0, Reason: exitReason(code),
			StartedAt: metav1.NewTime(c.startedAt), FinishedAt: metav1.Now()}
		c.ready = false
		c.mu.Unlock()
		w.record(timeline.EventContainerExited, c.spec.Name, func(e *timeline.Event) { e.ExitCode, e.Signal = &code, signal })
		w.updateStatus()
		policy := w.pod.Spec.RestartPolicy
		if policy == corev1.RestartPolicyNever || (policy == corev1.RestartPolicyOnFailure && code == 0) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Minute)
		c.mu.Lock()
		c.restarts++
		c.mu.Unlock()
		w.startContainer(c)
		w.record(timeline.EventRestarted, c.spec.Name, nil)
		w.updateStatus()
	}
}

func exitReason(code int) string {
	if code == 0 {
		return "Completed"
	}
	return "Error"
}

func (c *containerRunner) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exited == nil {
		return false
	}
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// probe runs one check of a probe against the container.
func (w *podWorker) probe(ctx context.Context, p *corev1.Probe, c *containerRunner) bool {
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.HTTPGet != nil:
		port, err := resolvePort(p.HTTPGet.Port, c.spec)
		if err != nil {
			return false
		}
		scheme := "http"
		if p.HTTPGet.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(podIPString(w.ip), strconv.Itoa(port)), p.HTTPGet.Path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false
		}
		req.Header.Set("User-Agent", "kube-probe/1."+KubernetesMinor())
		resp, err := probeClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode >= 200 && resp.StatusCode < 400
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, c.spec)
		if err != nil {
			return false
		}
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(podIPString(w.ip), strconv.Itoa(port)))
		if err != nil {
			return false
		}
		conn.Close()
		return true
	case p.Exec != nil:
		cmd, err := w.command(c.spec, p.Exec.Command)
		if err != nil {
			return false
		}
		return w.runInContainer(ctx, c, cmd) == nil
	}
	return true
}

// probeClient never keeps connections: each probe opens one, as the kubelet's do.
var probeClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// runInContainer runs an exec probe or hook in the container's cgroup, as a runtime's exec does.
func (w *podWorker) runInContainer(ctx context.Context, c *containerRunner, cmd *exec.Cmd) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	w.place(c, cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return ctx.Err()
	}
}

func resolvePort(port intstr.IntOrString, c corev1.Container) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, p := range c.Ports {
		if p.Name == port.StrVal {
			return int(p.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, port.StrVal)
}

// probeState counts consecutive results against a probe's thresholds.
type probeState struct {
	probe              *corev1.Probe
	successes, failure int32
	result             bool // readiness starts false, liveness true
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

// probeLoop runs a container's startup, readiness and liveness probes at the kubelet's cadence.
func (w *podWorker) probeLoop(ctx context.Context, c *containerRunner) {
	spec := c.spec
	var readiness, liveness, startup *probeState
	if spec.ReadinessProbe != nil {
		readiness = &probeState{probe: spec.ReadinessProbe}
	}
	if spec.LivenessProbe != nil {
		liveness = &probeState{probe: spec.LivenessProbe, result: true}
	}
	if spec.StartupProbe != nil {
		startup = &probeState{probe: spec.StartupProbe}
	}
	next := map[*probeState]time.Time{}
	for _, s := range []*probeState{readiness, liveness, startup} {
		if s != nil {
			next[s] = time.Now().Add(time.Duration(s.probe.InitialDelaySeconds) * time.Second)
		}
	}
	if readiness == nil {
		// Without a readiness probe a running container is ready.
		c.mu.Lock()
		c.ready = true
		c.mu.Unlock()
		w.readinessChanged()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := time.Now()
		c.mu.Lock()
		startupOK := c.startupOK
		c.mu.Unlock()
		for s, due := range next {
			if now.Before(due) || (s != startup && !startupOK) {
				continue
			}
			next[s] = now.Add(time.Duration(max(s.probe.PeriodSeconds, 1)) * time.Second)
			if !c.running() {
				continue
			}
			ok := w.probe(ctx, s.probe, c)
			if ctx.Err() != nil {
				return
			}
			changed := s.observe(ok)
			switch s {
			case startup:
				if changed && s.result {
					c.mu.Lock()
					c.startupOK = true
					c.mu.Unlock()
					w.updateStatus()
				}
			case readiness:
				c.mu.Lock()
				c.ready = s.result
				c.mu.Unlock()
				if changed {
					w.readinessChanged()
				}
			case liveness:
				if changed && !s.result {
					// The kubelet kills a container that fails liveness; supervise restarts it.
					c.mu.Lock()
					cmd := c.cmd
					c.mu.Unlock()
					if cmd != nil && cmd.Process != nil {
						_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
					}
					s.result, s.failure = true, 0
				}
			}
		}
	}
}

func (w *podWorker) allReady() bool {
	for _, c := range w.ctrs {
		c.mu.Lock()
		ok := c.ready && c.exited != nil
		c.mu.Unlock()
		if !ok || !c.running() {
			return false
		}
	}
	return len(w.ctrs) > 0
}

func (w *podWorker) readinessChanged() {
	ready := w.allReady()
	w.mu.Lock()
	changed := ready != w.ready
	w.ready = ready
	w.mu.Unlock()
	if !changed {
		return
	}
	if ready {
		w.record(timeline.EventPodReady, "", nil)
	} else {
		w.record(timeline.EventPodNotReady, "", nil)
	}
	w.updateStatus()
}

// updateStatus writes the Pod's status as a kubelet reports it.
func (w *podWorker) updateStatus() {
	w.mu.Lock()
	podReady := w.ready
	w.mu.Unlock()
	hostIP := w.agent.opts.Network.HostIP().String()
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
		c.mu.Lock()
		cs := corev1.ContainerStatus{Name: c.spec.Name, Image: c.spec.Image, ImageID: c.spec.Image, RestartCount: c.restarts,
			Ready: c.ready, Started: ptr.To(c.startupOK && c.exited != nil), ContainerID: "rollout-lab://" + w.key + "/" + c.spec.Name}
		running := false
		if c.exited != nil {
			select {
			case <-c.exited:
				cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: int32(c.exitCode), Reason: exitReason(c.exitCode), StartedAt: metav1.NewTime(c.startedAt), FinishedAt: metav1.Now()}
				cs.Ready = false
				allSucceeded = allSucceeded && c.exitCode == 0
			default:
				running = true
				cs.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.startedAt)}
			}
		} else {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: c.waitReason, Message: c.waitMessage}
		}
		if c.lastState != nil {
			cs.LastTerminationState.Terminated = c.lastState
		}
		allTerminated = allTerminated && cs.State.Terminated != nil
		c.mu.Unlock()
		allRunning = allRunning && running
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

// shutdown carries out the Pod's termination as the kubelet does: readiness off, preStop, SIGTERM, and SIGKILL
// when the grace period (counted from when the deletion was seen, preStop included) ends — at least 2 s after
// SIGTERM when the hook overran.
func (w *podWorker) shutdown(deleted *corev1.Pod) {
	seen := time.Now()
	grace := time.Duration(0)
	if deleted != nil {
		if deleted.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*deleted.DeletionGracePeriodSeconds) * time.Second
		}
		w.record(timeline.EventDeletionSeen, "", func(e *timeline.Event) { e.Message = "grace period " + grace.String() })
	}
	select {
	case <-w.killed:
		grace = 0
	default:
	}
	killAt := seen.Add(grace)
	w.mu.Lock()
	w.ready = false
	w.mu.Unlock()
	for _, c := range w.ctrs {
		c.mu.Lock()
		c.ready = false
		c.mu.Unlock()
	}
	if deleted != nil {
		w.updateStatus()
	}
	var wg sync.WaitGroup
	for _, c := range w.ctrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.stopContainer(c, grace > 0, killAt)
		}()
	}
	wg.Wait()
	if deleted != nil {
		// As the kubelet: the containers' terminated states reach the API before the Pod object goes.
		w.updateStatus()
	}
}

func (w *podWorker) stopContainer(c *containerRunner, graceful bool, killAt time.Time) {
	if !c.running() {
		return
	}
	if hook := c.spec.Lifecycle; graceful && hook != nil && hook.PreStop != nil {
		w.record(timeline.EventPreStopStart, c.spec.Name, nil)
		ctx, cancel := context.WithDeadline(w.agent.ctx, killAt)
		err := w.runHook(ctx, hook.PreStop, c)
		cancel()
		w.record(timeline.EventPreStopEnd, c.spec.Name, func(e *timeline.Event) {
			if err != nil {
				e.Message = err.Error()
			}
		})
	}
	c.mu.Lock()
	cmd, exited := c.cmd, c.exited
	c.mu.Unlock()
	if running := c.running(); running {
		// The time is taken before the signal: the app may act on it (close its listener) before this goroutine
		// runs again, and the timeline must not show the effect before its cause.
		sent := time.Now()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		w.record(timeline.EventSIGTERM, c.spec.Name, func(e *timeline.Event) { e.Time = sent })
		if min := time.Now().Add(minKillDelay); graceful && killAt.Before(min) {
			killAt = min
		}
		select {
		case <-exited:
		case <-time.After(time.Until(killAt)):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			w.record(timeline.EventSIGKILL, c.spec.Name, nil)
			<-exited
		}
	} else {
		<-exited
	}
	c.mu.Lock()
	code, signal := c.exitCode, c.signal
	c.mu.Unlock()
	w.record(timeline.EventContainerExited, c.spec.Name, func(e *timeline.Event) { e.ExitCode, e.Signal = &code, signal })
}

func (w *podWorker) runHook(ctx context.Context, h *corev1.LifecycleHandler, c *containerRunner) error {
	switch {
	case h.Exec != nil:
		cmd, err := w.command(c.spec, h.Exec.Command)
		if err != nil {
			return err
		}
		return w.runInContainer(ctx, c, cmd)
	case h.Sleep != nil:
		select {
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	case h.HTTPGet != nil:
		ok := w.probe(ctx, &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: h.HTTPGet}, TimeoutSeconds: int32(max(time.Until(deadlineOf(ctx)).Seconds(), 1))}, c)
		if !ok {
			return fmt.Errorf("preStop httpGet %s failed", h.HTTPGet.Path)
		}
	}
	return nil
}

func deadlineOf(ctx context.Context) time.Time {
	d, ok := ctx.Deadline()
	if !ok {
		return time.Now().Add(time.Minute)
	}
	return d
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

// containerCPU is a container's CPU as its cgroups take it: a limit without a request stands for both, as the API
// server defaults it; the Pod's limit counts only when every container has one, as the kubelet sets it.
func containerCPU(pod *corev1.Pod, c corev1.Container) cgroups.Container {
	milli := func(c corev1.Container) (request, limit int64) {
		if q, ok := c.Resources.Limits[corev1.ResourceCPU]; ok {
			limit = q.MilliValue()
		}
		request = limit
		if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
			request = q.MilliValue()
		}
		return request, limit
	}
	ctr := cgroups.Container{Namespace: pod.Namespace, Pod: pod.Name, UID: string(pod.UID), Node: pod.Spec.NodeName, Name: c.Name}
	ctr.Request, ctr.Limit = milli(c)
	allLimited := true
	for _, other := range pod.Spec.Containers {
		request, limit := milli(other)
		ctr.PodRequest += request
		ctr.PodLimit += limit
		allLimited = allLimited && limit > 0
	}
	if !allLimited {
		ctr.PodLimit = 0
	}
	return ctr
}
