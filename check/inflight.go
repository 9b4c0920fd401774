package check

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// InFlightPerPod is how many requests the in-flight case aims to have in flight at each Pod's SIGTERM: several, so
// that a Pod that finishes them (or cuts them) shows it in more than one request.
const InFlightPerPod = 3

// DefaultMaxRate bounds the in-flight case's arrival rate. On the 2-core machines the lab runs on, the loader and the
// balancer spend CPU of their own on every request; beyond a few hundred requests a second they take it from the app
// they load. The verdict reports the rate used, so a user with a bigger machine or a cluster raises it (--max-rate).
const DefaultMaxRate = 300.0

// InFlightLoad is the in-flight case's load chosen by Little's law (in flight = arrival rate × latency) from the
// app's latency measured before it: the rate that puts InFlightPerPod requests in flight at each Pod, bounded by
// MaxRate, and a bound on the requests outstanding at once so that an app slower under that load than when it was
// measured gets its requests queued at the loader, never piled up until they time out.
type InFlightLoad struct {
	// Latency is the app's median latency measured by the accept case (a light load: a request at a time per
	// connection, 20 a second).
	Latency time.Duration
	Rate    float64
	MaxRate float64
	// MaxInFlight bounds the requests outstanding at once (load.maxWorkers).
	MaxInFlight int
	// PerPod is the expected number in flight at each Pod: Rate × Latency / replicas.
	PerPod float64
}

// TooFast says the app answers too fast for a request to be in flight at a SIGTERM within the rate bound.
func (l InFlightLoad) TooFast() bool { return l.PerPod < 1 }

// ChooseInFlightLoad applies Little's law for replicas Pods of an app whose latency is latency.
func ChooseInFlightLoad(latency time.Duration, replicas int, maxRate float64) InFlightLoad {
	target := InFlightPerPod * replicas
	rate := maxRate
	if latency > 0 {
		rate = min(float64(target)/latency.Seconds(), maxRate)
	}
	rate = math.Floor(rate*10) / 10 // a rate a plan writes
	return InFlightLoad{Latency: latency, Rate: rate, MaxRate: maxRate, MaxInFlight: target,
		PerPod: rate * latency.Seconds() / float64(replicas)}
}

// String says what was chosen and why, for the log and the verdict.
func (l InFlightLoad) String() string {
	s := fmt.Sprintf("the app's median latency %s (accept case) → %.1f requests/s (at most %.0f/s), at most %d at once: by Little's law %.1f in flight per Pod",
		l.Latency.Round(10*time.Microsecond), l.Rate, l.MaxRate, l.MaxInFlight, l.PerPod)
	if l.TooFast() {
		s += "; the app answers too fast for that within the rate bound: a slower --path (a request that does real work) exercises it"
	}
	return s
}

// TuneInFlight sets the in-flight case's load from the accept case's finished runs (the check's plan runs that case
// first). Any other case, or no measurement, is returned unchanged with ok false.
func TuneInFlight(c plan.Case, finished []rundir.RunRecord, maxRate float64) (_ plan.Case, chosen InFlightLoad, ok bool) {
	if c.Name != CaseInFlight {
		return c, InFlightLoad{}, false
	}
	latency, ok := acceptLatency(finished)
	if !ok {
		return c, InFlightLoad{}, false
	}
	chosen = ChooseInFlightLoad(latency, c.App.Replicas, maxRate)
	c.Load.Rate = chosen.Rate
	c.Load.Stages = nil
	c.Load.MaxWorkers = chosen.MaxInFlight
	c.Load.Workers = min(c.Load.Workers, chosen.MaxInFlight)
	c.Load.Connections = max(c.Load.Connections, chosen.MaxInFlight)
	c.Requests = c.Load.Requests()
	return c, chosen, true
}

// acceptLatency is the median of the accept case's finished runs' median latencies.
func acceptLatency(finished []rundir.RunRecord) (time.Duration, bool) {
	var p50s []time.Duration
	for _, r := range finished {
		if r.Labels.Case == CaseAccept && !r.Summary.Stopped && r.Summary.P50 > 0 {
			p50s = append(p50s, r.Summary.P50)
		}
	}
	if len(p50s) == 0 {
		return 0, false
	}
	slices.Sort(p50s)
	return p50s[len(p50s)/2], true
}
