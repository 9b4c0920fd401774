package experiment

import (
	"net"
	"sync"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/load"
)

// cutSlack absorbs the gap between the agent's record of an exit and the client seeing its connection end.
const cutSlack = 100 * time.Millisecond

type podTimeline struct {
	sigterm, exited time.Time
	graceful        bool // exited with status 0 after SIGTERM
}

// Attribution is failed requests counted by phase and, within each phase, by error class.
type Attribution map[string]map[string]uint64

// ByPhase totals the classes of each phase.
func (a Attribution) ByPhase() map[string]uint64 {
	out := map[string]uint64{}
	for phase, classes := range a {
		for _, n := range classes {
			out[phase] += n
		}
	}
	return out
}

// Attribute sorts failed requests into phases from where they went (the endpoint) and when, against the Pods'
// recorded lifecycle.
func Attribute(failures []load.Outcome, events []lab.Event) Attribution {
	a := NewAttributor(0, 0)
	for _, e := range events {
		a.Event(e)
	}
	for _, f := range failures {
		a.pending = append(a.pending, f)
	}
	out, _ := a.Finish()
	return out
}

// settleTime is how long a failed request waits for its Pod's timeline before it is attributed: the events that
// decide it (SIGTERM, the exit) reach the recorder within milliseconds in the lab and within seconds from a
// cluster's watches. Only failures of the last settleTime are held, so memory grows with the failure rate, not
// with the run's length.
const settleTime = 10 * time.Second

// FailureSampleLimit is how many failed requests a run keeps one by one (failures.json); beyond it they are only
// counted, by phase and class.
const FailureSampleLimit = 10000

// Failure is one failed request as kept for a run's timeline.
type Failure struct {
	Sent      time.Time `json:"sent"`
	LatencyMs float64   `json:"latencyMs"`
	Class     string    `json:"class"`
	Cause     string    `json:"cause"`
	Endpoint  string    `json:"endpoint,omitempty"`
	Code      uint16    `json:"code,omitempty"`
}

// Failures is a run's bounded record of failed requests.
type Failures struct {
	Limit   int       `json:"limit"`
	Dropped uint64    `json:"dropped"` // counted in the attribution, not kept one by one
	Kept    []Failure `json:"failures"`
}

// Attributor attributes failed requests as they arrive, against the timeline as it is recorded: it holds only the
// failures younger than its settle time and a bounded sample, whatever the run's length or failure count.
type Attributor struct {
	mu      sync.Mutex
	settle  time.Duration
	now     func() time.Time
	pods    map[string]*podTimeline // by Pod UID, and by Pod IP for failures whose Pod is known by address only
	pending []load.Outcome          // in arrival order; those before head are decided
	head    int
	counts  Attribution
	sample  Failures
}

// NewAttributor holds failures for settle before deciding them and keeps up to sampleLimit of them.
func NewAttributor(settle time.Duration, sampleLimit int) *Attributor {
	return &Attributor{settle: settle, now: time.Now, pods: map[string]*podTimeline{}, counts: Attribution{},
		sample: Failures{Limit: sampleLimit, Kept: []Failure{}}}
}

// Event takes one timeline event.
func (a *Attributor) Event(e lab.Event) {
	if e.PodIP == "" && e.UID == "" || e.Type == lab.EventServiceOut {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pods[uidKey(e.UID)]
	if e.UID == "" {
		p = a.pods[e.PodIP]
	}
	if p == nil {
		p = &podTimeline{}
		if e.UID != "" {
			a.pods[uidKey(e.UID)] = p
		}
	}
	if e.PodIP != "" {
		a.pods[e.PodIP] = p // an address is reused by later Pods: the latest holds it
	}
	switch e.Type {
	case lab.EventSIGTERM:
		if p.sigterm.IsZero() {
			p.sigterm = e.Time
		}
	case lab.EventContainerExited:
		if p.exited.IsZero() && !p.sigterm.IsZero() {
			p.exited = e.Time
			p.graceful = e.ExitCode != nil && *e.ExitCode == 0
		}
	}
}

// Outcome takes a request's outcome; successes are ignored.
func (a *Attributor) Outcome(o load.Outcome) {
	if o.Class == load.ClassNone {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pending = append(a.pending, o)
	now := a.now()
	for ; a.head < len(a.pending); a.head++ {
		f := a.pending[a.head]
		if now.Sub(f.Sent.Add(f.Latency)) < a.settle {
			break
		}
		a.decide(f)
	}
	// Compact once half is decided, so the backing array does not keep every failure ever held.
	if a.head > 0 && a.head >= len(a.pending)/2 {
		n := copy(a.pending, a.pending[a.head:])
		clear(a.pending[n:])
		a.pending, a.head = a.pending[:n], 0
	}
}

func (a *Attributor) decide(f load.Outcome) {
	phase := attributeOne(f, a.pods)
	if a.counts[phase] == nil {
		a.counts[phase] = map[string]uint64{}
	}
	a.counts[phase][f.Class]++
	if len(a.sample.Kept) < a.sample.Limit {
		a.sample.Kept = append(a.sample.Kept, Failure{Sent: f.Sent, LatencyMs: float64(f.Latency) / float64(time.Millisecond),
			Class: f.Class, Cause: phase, Endpoint: f.Endpoint, Code: f.Code})
	} else {
		a.sample.Dropped++
	}
}

// Finish decides the failures still held, against the whole timeline, and returns the counts and the sample.
func (a *Attributor) Finish() (Attribution, Failures) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, f := range a.pending[a.head:] {
		a.decide(f)
	}
	a.pending, a.head = nil, 0
	return a.counts, a.sample
}

// uidKey keeps UIDs and addresses apart in one map.
func uidKey(uid string) string { return "uid:" + uid }

func attributeOne(f load.Outcome, pods map[string]*podTimeline) string {
	var p *podTimeline
	if f.Pod != "" {
		p = pods[uidKey(f.Pod)]
	} else if host, _, err := net.SplitHostPort(f.Endpoint); err == nil {
		p = pods[host]
	}
	if p == nil || p.sigterm.IsZero() {
		return analysis.PhaseOther
	}
	switch f.Class {
	case load.ClassReset, load.ClassEOF, load.ClassHTTP5xx:
		// Running when the process exited at once: cut. (Through the http balancer a cut reaches the client as a 502.)
		end := f.Sent.Add(f.Latency)
		if !p.graceful && !p.exited.IsZero() && !p.exited.Before(f.Sent.Add(-cutSlack)) && !p.exited.After(end.Add(cutSlack)) {
			return analysis.PhaseInFlightCut
		}
		fallthrough
	case load.ClassRefused, load.ClassTimeout, load.ClassOther:
		// Sent after SIGTERM yet routed there, because a node had not yet taken the Pod out of the Service: the
		// server had closed its listener (refused; a tcp balancer passes it on as a reset, an http one as a 502), or
		// the Pod and its address were already gone (no route, timeout).
		if !f.Sent.Before(p.sigterm) {
			return analysis.PhaseBeforeServiceOut
		}
	}
	return analysis.PhaseOther
}
