package calibrate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/plan"
)

// routedTimeout is how long each probe connection waits: a node's rules answer or refuse within milliseconds.
const routedTimeout = 500 * time.Millisecond

// programmedWithin bounds the wait until every node routes a new probe Service.
const programmedWithin = 2 * time.Minute

// measure deletes the probes one at a time, each while every node's NodePort is probed, and records each node's
// service-out.
func (c *calibration) measure(ctx context.Context) error {
	c.samples = map[string][]time.Duration{}
	c.start = time.Now()
	for _, p := range c.probes {
		// Every node must route to the probe before it goes, or a node that never had it would read as instant.
		if err := c.waitRouted(ctx, p); err != nil {
			return err
		}
		outs, err := c.deleteAndWatch(ctx, p)
		if err != nil {
			return err
		}
		for node, d := range outs {
			c.samples[node] = append(c.samples[node], d)
		}
		c.profile.ServiceOut.Deletions++
		c.cfg.Logger.Info("probe deleted", "pod", p.pod, "serviceOut", outs)
	}
	c.end = time.Now()
	c.summarise()
	return nil
}

func (c *calibration) summarise() {
	var all []time.Duration
	out := &c.profile.ServiceOut
	out.Nodes = nil
	for _, n := range c.nodes {
		all = append(all, c.samples[n.name]...)
		out.Nodes = append(out.Nodes, plan.NodeOut{Node: n.name, Quantiles: quantiles(c.samples[n.name])})
	}
	out.All = quantiles(all)
	out.Recommend = plan.Recommend(out.All.Max.D(), c.cfg.Margin)
	c.profile.MeasuredAt = c.start.UTC().Truncate(time.Second)
}

// waitRouted waits until a new connection through every node's NodePort reaches the probe.
func (c *calibration) waitRouted(ctx context.Context, p probe) error {
	ctx, cancel := context.WithTimeout(ctx, programmedWithin)
	defer cancel()
	for _, n := range c.nodes {
		addr := net.JoinHostPort(n.addr, strconv.Itoa(p.nodePort))
		for !reaches(ctx, addr) {
			select {
			case <-ctx.Done():
				return fmt.Errorf("no new connection through %s's NodePort %s reached probe %s within %s (can this machine reach the nodes' %s addresses?): %w",
					n.name, addr, p.pod, programmedWithin, c.cfg.AddressType, ctx.Err())
			case <-time.After(c.cfg.Interval):
			}
		}
	}
	return nil
}

// reaches opens a new connection and tells whether it was accepted (by the probe: the sentinel refuses).
func reaches(ctx context.Context, addr string) bool {
	d := net.Dialer{Timeout: routedTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

// deleteAndWatch deletes the probe's Pod and probes every node until each has refused Refusals in a row.
func (c *calibration) deleteAndWatch(ctx context.Context, p probe) (map[string]time.Duration, error) {
	type result struct {
		node string
		out  time.Duration
		err  error
	}
	// Timed from the request: no node can let go before the API has the deletion.
	at := time.Now()
	if err := c.cfg.Client.CoreV1().Pods(c.cfg.Namespace).Delete(ctx, p.pod, metav1.DeleteOptions{}); err != nil {
		return nil, fmt.Errorf("delete probe Pod %s: %w", p.pod, err)
	}
	results := make(chan result, len(c.nodes))
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.watchNode(ctx, net.JoinHostPort(n.addr, strconv.Itoa(p.nodePort)), at)
			results <- result{node: n.name, out: out, err: err}
		}()
	}
	wg.Wait()
	close(results)
	outs := map[string]time.Duration{}
	var errs []error
	for r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("node %s, probe %s: %w", r.node, p.pod, r.err))
			continue
		}
		outs[r.node] = r.out
	}
	return outs, errors.Join(errs...)
}

// watchNode opens perTick new connections through addr every Interval until Refusals in a row were refused, and
// returns the time from the deletion (at) to the first tick after the last one that reached the probe. A tick
// reaches the probe when any of its connections does: while a node still routes to it, a tick misses it only with
// a chance of 2^-perTick, which keeps the estimate within a tick or two of the node's change. A node still routing
// to the probe when its preStop sleep ends (Hold) is an error: after it the probe stops serving, and a refusal no
// longer says the node let go.
func (c *calibration) watchNode(ctx context.Context, addr string, at time.Time) (time.Duration, error) {
	deadline := at.Add(c.cfg.Hold)
	var lastReached, streakStart time.Time
	refused := 0
	for {
		t := time.Now()
		if t.After(deadline) {
			return 0, fmt.Errorf("%w (%s after the deletion; last reached %s after it): calibrate with a longer hold", errNeverLetGo,
				c.cfg.Hold, lastReached.Sub(at).Round(time.Millisecond))
		}
		if reached := reachedOf(ctx, addr, perTick); reached > 0 {
			lastReached, refused = t, 0
		} else {
			if refused == 0 {
				streakStart = t
			}
			if refused += perTick; refused >= c.cfg.Refusals {
				return max(streakStart.Sub(at), 0).Round(time.Millisecond), nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Until(t.Add(c.cfg.Interval))):
		}
	}
}

// perTick is how many new connections each probe tick opens through a node, side by side.
const perTick = 4

// reachedOf opens n connections to addr at once and counts those the probe accepted.
func reachedOf(ctx context.Context, addr string, n int) int {
	results := make(chan bool, n)
	for range n {
		go func() { results <- reaches(ctx, addr) }()
	}
	count := 0
	for range n {
		if <-results {
			count++
		}
	}
	return count
}

// readProgramming adds kube-proxy's own programming latency over the calibration, when a Prometheus scrapes it.
func (c *calibration) readProgramming(ctx context.Context) error {
	if c.cfg.Prometheus == nil {
		return nil
	}
	window := analysis.Window{Start: c.start, End: c.end.Add(5 * time.Second)}
	// The last changes' observations reach Prometheus at its next scrape.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Until(window.End)):
	}
	m, err := analysis.Measure(ctx, c.cfg.Prometheus, analysis.KubeProxyProgrammingMetric, window, window.End)
	if err != nil {
		return fmt.Errorf("kube-proxy's programming latency: %w", err)
	}
	if m == nil {
		c.cfg.Logger.Warn("kube-proxy's programming latency is not in Prometheus", "metric", analysis.KubeProxyProgrammingMetric)
		return nil
	}
	seconds := func(v float64) plan.Duration { return plan.Duration(time.Duration(v * float64(time.Second))) }
	found := &plan.Programming{Samples: int(m.Count), P50: seconds(m.P50), P99: seconds(m.P99)}
	c.profile.KubeProxy.Programming = found
	return nil
}
