package calibrate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
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
	for i, p := range c.probes {
		if c.loadURL != nil {
			// One Service behind the URL: it selects this probe (and the sentinel) now; every route let the last
			// one go before (Refusals in a row), so a node still on the old selector sends only to the sentinel.
			if err := c.pointLoadService(ctx, i); err != nil {
				return err
			}
		}
		// Every route must reach the probe before it goes, or a node that never had it would read as instant.
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
	for _, r := range c.routes {
		all = append(all, c.samples[r.name]...)
		out.Nodes = append(out.Nodes, plan.NodeOut{Node: r.name, Quantiles: quantiles(c.samples[r.name])})
	}
	out.All = quantiles(all)
	out.Recommend = plan.Recommend(out.All.Max.D(), c.cfg.Margin)
	c.profile.MeasuredAt = c.start.UTC().Truncate(time.Second)
}

// waitRouted waits until a new connection through every route reaches the probe.
func (c *calibration) waitRouted(ctx context.Context, p probe) error {
	within := programmedWithin
	if c.loadURL != nil {
		// A cloud load balancer is provisioned after its Service: minutes, not seconds.
		within = loadBalancerWithin
	}
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for _, r := range c.routes {
		for !r.reach(ctx, p) {
			select {
			case <-ctx.Done():
				return fmt.Errorf("no new connection through %s reached probe %s within %s (%s): %w", r.desc, p.pod, within, r.hint, ctx.Err())
			case <-time.After(c.cfg.Interval):
			}
		}
	}
	return nil
}

// loadBalancerWithin bounds the wait until the load URL reaches the first probe.
const loadBalancerWithin = 5 * time.Minute

// A route is one way new connections reach the probes: a node's NodePort, or the load URL.
type route struct {
	// name is the node's name or the load URL (its password masked), as the profile names it.
	name string
	// desc says it in an error.
	desc string
	// reach opens one new connection and tells whether it reached the probe (the sentinel refuses).
	reach func(ctx context.Context, p probe) bool
	// hint says what to check when the route never reaches a probe.
	hint string
}

// nodeRoutes go through every node's NodePort: a TCP connection accepted is the probe (the sentinel refuses).
func nodeRoutes(nodes []node, addressType string) []route {
	var routes []route
	for _, n := range nodes {
		routes = append(routes, route{name: n.name, desc: "node " + n.name + "'s NodePort at " + n.addr, hint: "can this machine reach the nodes' " + addressType + " addresses?",
			reach: func(ctx context.Context, p probe) bool {
				d := net.Dialer{Timeout: routedTimeout}
				conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(n.addr, strconv.Itoa(p.nodePort)))
				if err != nil {
					return false
				}
				conn.Close()
				return true
			}})
	}
	return routes
}

// urlRoute goes through the load URL with an HTTP request on a new connection: an answer of the app (any status
// below 500) is the probe. A load balancer may accept the connection itself and then reset it, or answer 502/503,
// when its backend (the sentinel) refuses.
func urlRoute(loadURL *url.URL) route {
	client := &http.Client{Timeout: routedTimeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	target := loadURL.JoinPath("/").String()
	return route{name: loadURL.Redacted(), desc: "the load URL " + loadURL.Redacted(), hint: fmt.Sprintf("does it lead to Service %s?", LoadServiceName),
		reach: func(ctx context.Context, _ probe) bool {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
			if err != nil {
				return false
			}
			resp, err := client.Do(req)
			if err != nil {
				return false
			}
			// The status says who answered; the body does not matter and the connection is not kept.
			resp.Body.Close()
			return resp.StatusCode < 500
		}}
}

// deleteAndWatch deletes the probe's Pod and probes every route until each has refused Refusals in a row.
func (c *calibration) deleteAndWatch(ctx context.Context, p probe) (map[string]time.Duration, error) {
	type result struct {
		route route
		out   time.Duration
		err   error
	}
	// Timed from the request: no node can let go before the API has the deletion.
	at := time.Now()
	if err := c.cfg.Client.CoreV1().Pods(c.cfg.Namespace).Delete(ctx, p.pod, metav1.DeleteOptions{}); err != nil {
		return nil, fmt.Errorf("delete probe Pod %s: %w", p.pod, err)
	}
	results := make(chan result, len(c.routes))
	var wg sync.WaitGroup
	for _, r := range c.routes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.watchRoute(ctx, r, p, at)
			results <- result{route: r, out: out, err: err}
		}()
	}
	wg.Wait()
	close(results)
	outs := map[string]time.Duration{}
	var errs []error
	for r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s, probe %s: %w", r.route.desc, p.pod, r.err))
			continue
		}
		outs[r.route.name] = r.out
	}
	return outs, errors.Join(errs...)
}

// watchRoute opens perTick new connections through the route every Interval until Refusals in a row were refused, and
// returns the time from the deletion (at) to the first tick after the last one that reached the probe. A tick
// reaches the probe when any of its connections does: while a node still routes to it, a tick misses it only with
// a chance of 2^-perTick (through a load URL, of those that tick's connections went to that node), which keeps the estimate within a tick or two of the node's change. A node still routing
// to the probe when its preStop sleep ends (Hold) is an error: after it the probe stops serving, and a refusal no
// longer says the node let go.
func (c *calibration) watchRoute(ctx context.Context, r route, p probe, at time.Time) (time.Duration, error) {
	deadline := at.Add(c.cfg.Hold)
	var lastReached, streakStart time.Time
	refused := 0
	for {
		t := time.Now()
		if t.After(deadline) {
			return 0, fmt.Errorf("%w (%s after the deletion; last reached %s after it): calibrate with a longer hold", errNeverLetGo,
				c.cfg.Hold, lastReached.Sub(at).Round(time.Millisecond))
		}
		if reached := reachedOf(ctx, r, p, perTick); reached > 0 {
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

// reachedOf opens n connections through the route at once and counts those that reached the probe.
func reachedOf(ctx context.Context, r route, p probe, n int) int {
	results := make(chan bool, n)
	for range n {
		go func() { results <- r.reach(ctx, p) }()
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
