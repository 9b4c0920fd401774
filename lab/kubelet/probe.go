package kubelet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/rollout-lab/rollout-lab/timeline"
)

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
		req.Header.Set("User-Agent", probeUserAgent(w.agent.opts.Version))
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

// probeUserAgent is the kubelet's probe User-Agent for a release: kube-probe/MAJOR.MINOR.
func probeUserAgent(version string) string {
	parts := strings.SplitN(strings.TrimPrefix(version, "v"), ".", 3)
	if len(parts) < 2 {
		return "kube-probe"
	}
	return "kube-probe/" + parts[0] + "." + parts[1]
}
