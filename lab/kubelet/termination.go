package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/rollout-lab/rollout-lab/timeline"
)

// minKillDelay is what the kubelet grants after SIGTERM when the preStop hook used up the grace period.
const minKillDelay = 2 * time.Second

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
		go w.watchListeners(c, cmd.Process.Pid, exited)
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

// listenerPoll is how often the node agent looks at a terminating container's sockets.
const listenerPoll = 5 * time.Millisecond

// watchListeners records listener_closed for any app, not only one that logs it: after SIGTERM it reads the
// sockets of the container's network namespace (/proc/PID/net/tcp and tcp6) until none of the container's ports is
// listening any more, or the process exits (which closes them with everything else).
func (w *podWorker) watchListeners(c *containerRunner, pid int, exited <-chan struct{}) {
	ports := map[uint16]bool{}
	for _, p := range c.spec.Ports {
		if p.Protocol == "" || p.Protocol == corev1.ProtocolTCP {
			ports[uint16(p.ContainerPort)] = true
		}
	}
	if len(ports) == 0 {
		return
	}
	for {
		listening, err := listeningOn(pid, ports)
		select {
		case <-exited:
			return
		default:
		}
		if err != nil {
			return
		}
		if !listening {
			seen := time.Now()
			if c.listenerClosed.CompareAndSwap(false, true) {
				w.record(timeline.EventListenerClosed, c.spec.Name, func(e *timeline.Event) {
					e.Time, e.Message = seen, "seen by the node agent: no socket listening on the container's ports"
				})
			}
			return
		}
		select {
		case <-exited:
			return
		case <-time.After(listenerPoll):
		}
	}
}

// listeningOn says whether a socket of process pid's network namespace listens on one of ports.
func listeningOn(pid int, ports map[uint16]bool) (bool, error) {
	for _, table := range []string{"tcp", "tcp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			if table == "tcp6" && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return false, err
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fields := strings.Fields(line)
			// local_address is HEXIP:HEXPORT; st 0A is LISTEN.
			if len(fields) < 4 || fields[3] != "0A" {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			port, err := strconv.ParseUint(hexPort, 16, 16)
			if ok && err == nil && ports[uint16(port)] {
				return true, nil
			}
		}
	}
	return false, nil
}
