package kubelet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/timeline"
)

type containerRunner struct {
	spec   corev1.Container
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	// listenerClosed is set once this run of the container has a listener_closed event (the app's own, or the
	// node agent's from its sockets), so that it has one.
	listenerClosed atomic.Bool
	exitCode       int
	signal         string
	startedAt      time.Time
	restarts       int32
	ready          bool
	startupOK      bool
	lastState      *corev1.ContainerStateTerminated
	waitReason     string
	waitMessage    string
	cgroup         string // the container's cgroup, relative to the lab's; empty without CPU accounting
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
		"status.hostIP": w.agent.opts.Network.NodeIP(w.pod.Spec.NodeName).String(), "spec.serviceAccountName": w.pod.Spec.ServiceAccountName}
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
			if event == timeline.EventListenerClosed && c.listenerClosed.CompareAndSwap(false, true) {
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
	c.listenerClosed.Store(false)
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
