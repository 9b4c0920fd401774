// Package attribution decides, as a run goes, why each failed request failed — from the Pod its connection reached
// and that Pod's timeline (SIGTERM, exit, graceful or not) — and keeps a bounded sample of them.
package attribution

import (
	"net"
	"sync"
	"time"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Causes a failed request is attributed to: why it failed, as the article explains it.
const (
	// CauseBeforeServiceOut: the connection was routed to a Pod that had already stopped listening, because its
	// SIGTERM came before the routing node's service-out.
	CauseBeforeServiceOut = "before-service-out"
	// CauseInFlightCut: the request was running on the Pod when its process ended without a graceful shutdown.
	CauseInFlightCut = "in-flight-cut"
	// CauseOther: anything else (no endpoint known, or no termination of that Pod explains it).
	CauseOther = "other"
)

// Causes lists the causes in report order.
var Causes = []string{CauseBeforeServiceOut, CauseInFlightCut, CauseOther}

// cutSlack absorbs the gap between the agent's record of an exit and the client seeing its connection end.
const cutSlack = 100 * time.Millisecond

type podTimeline struct {
	uid, ip         string
	sigterm, exited time.Time
	graceful        bool // exited with status 0 after SIGTERM
	// Requests routed to the Pod that were in flight when it got SIGTERM, and when its process exited.
	atSigterm, atExit uint64
	reached           bool // the load reached it at all
}

// Attribution is failed requests counted by cause and, within each cause, by error class.
type Attribution map[string]map[string]uint64

// ByCause totals the classes of each cause.
func (a Attribution) ByCause() map[string]uint64 {
	out := map[string]uint64{}
	for cause, classes := range a {
		for _, n := range classes {
			out[cause] += n
		}
	}
	return out
}

// SettleTime is how long a failed request waits for its Pod's timeline before it is attributed: the events that
// decide it (SIGTERM, the exit) reach the recorder within milliseconds in the lab and within seconds from a
// cluster's watches. Only failures of the last SettleTime are held, so memory grows with the failure rate, not
// with the run's length.
const SettleTime = 10 * time.Second

// FailureSampleLimit is how many failed requests a run keeps one by one (failures.json); beyond it they are only
// counted, by cause and class.
const FailureSampleLimit = 10000

// Failure is one failed request as kept for a run's timeline.
type Failure struct {
	Sent      time.Time `json:"sent"`
	LatencyMs float64   `json:"latencyMs"`
	Class     string    `json:"class"`
	Cause     string    `json:"cause"`
	Endpoint  string    `json:"endpoint,omitempty"`
	// Pod is the UID of the Pod the request's connection reached, Node the node whose proxy routed it (when known).
	Pod  string `json:"pod,omitempty"`
	Node string `json:"node,omitempty"`
	Code uint16 `json:"code,omitempty"`
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
	order   []*podTimeline // every Pod seen, in order
	counts  Attribution
	sample  Failures
}

// NewAttributor holds failures for settle before deciding them and keeps up to sampleLimit of them.
func NewAttributor(settle time.Duration, sampleLimit int) *Attributor {
	return &Attributor{settle: settle, now: time.Now, pods: map[string]*podTimeline{}, counts: Attribution{},
		sample: Failures{Limit: sampleLimit, Kept: []Failure{}}}
}

// Event takes one timeline event.
func (a *Attributor) Event(e timeline.Event) {
	if e.PodIP == "" && e.UID == "" || e.Type == timeline.EventServiceOut {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pods[uidKey(e.UID)]
	if e.UID == "" {
		p = a.pods[e.PodIP]
	}
	if p == nil {
		p = &podTimeline{uid: e.UID, ip: e.PodIP}
		if e.UID != "" {
			a.pods[uidKey(e.UID)] = p
		}
		a.order = append(a.order, p)
	}
	if e.PodIP != "" {
		a.pods[e.PodIP] = p // an address is reused by later Pods: the latest holds it
	}
	switch e.Type {
	case timeline.EventSIGTERM:
		if p.sigterm.IsZero() {
			p.sigterm = e.Time
		}
	case timeline.EventContainerExited:
		if p.exited.IsZero() && !p.sigterm.IsZero() {
			p.exited = e.Time
			p.graceful = e.ExitCode != nil && *e.ExitCode == 0
		}
	}
}

// Outcome takes a request's outcome: every one counts for the in-flight figures, failures are attributed. Only
// outcomes routed to a known Pod, or failed, are held.
func (a *Attributor) Outcome(o load.Outcome) {
	if o.Class == load.ClassNone && o.Pod == "" && o.Endpoint == "" {
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
	if p := podOf(f, a.pods); p != nil {
		p.reached = true
		end := f.Sent.Add(f.Latency)
		if !p.sigterm.IsZero() && !f.Sent.After(p.sigterm) && !end.Before(p.sigterm) {
			p.atSigterm++
		}
		// The client may see a cut a moment before the agent records the exit it came from.
		endsLate := !end.Before(p.exited) || f.Class != load.ClassNone && !end.Before(p.exited.Add(-cutSlack))
		if !p.exited.IsZero() && !f.Sent.After(p.exited) && endsLate {
			p.atExit++
		}
	}
	if f.Class == load.ClassNone {
		return
	}
	cause := attributeOne(f, a.pods)
	if a.counts[cause] == nil {
		a.counts[cause] = map[string]uint64{}
	}
	a.counts[cause][f.Class]++
	if len(a.sample.Kept) < a.sample.Limit {
		a.sample.Kept = append(a.sample.Kept, Failure{Sent: f.Sent, LatencyMs: float64(f.Latency) / float64(time.Millisecond),
			Class: f.Class, Cause: cause, Endpoint: f.Endpoint, Pod: f.Pod, Node: f.Node, Code: f.Code})
	} else {
		a.sample.Dropped++
	}
}

// AnnotateInFlight puts the in-flight counts on each Pod's first sigterm and exited events (after its SIGTERM).
func AnnotateInFlight(events []timeline.Event, inFlight []rundir.PodInFlight) {
	byPod := map[string]rundir.PodInFlight{}
	for _, p := range inFlight {
		byPod[p.Pod] = p
	}
	done := map[string]bool{}
	for i := range events {
		e := &events[i]
		p, ok := byPod[e.UID]
		if !ok {
			p, ok = byPod[e.PodIP]
		}
		if !ok || done[e.UID+e.PodIP+e.Type] {
			continue
		}
		switch e.Type {
		case timeline.EventSIGTERM:
			e.InFlight = &p.AtSIGTERM
		case timeline.EventContainerExited:
			if !done[e.UID+e.PodIP+timeline.EventSIGTERM] {
				continue // a restart's exit, before the termination
			}
			e.InFlight = &p.AtExit
		default:
			continue
		}
		done[e.UID+e.PodIP+e.Type] = true
	}
}

// Attributed is what an attributor found in a run.
type Attributed struct {
	ByClass  Attribution
	Failures Failures
	// InFlight lists the Pods the load reached that got SIGTERM, with their in-flight counts (the previous case's
	// Pods, still terminating when this run began, are left out).
	InFlight []rundir.PodInFlight
}

// Finish decides the outcomes still held, against the whole timeline.
func (a *Attributor) Finish() Attributed {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, f := range a.pending[a.head:] {
		a.decide(f)
	}
	a.pending, a.head = nil, 0
	out := Attributed{ByClass: a.counts, Failures: a.sample}
	for _, p := range a.order {
		if p.sigterm.IsZero() || !p.reached {
			continue
		}
		id := p.uid
		if id == "" {
			id = p.ip
		}
		out.InFlight = append(out.InFlight, rundir.PodInFlight{Pod: id, AtSIGTERM: p.atSigterm, AtExit: p.atExit})
	}
	return out
}

// uidKey keeps UIDs and addresses apart in one map.
func uidKey(uid string) string { return "uid:" + uid }

// podOf is the timeline of the Pod an outcome's connection reached.
func podOf(f load.Outcome, pods map[string]*podTimeline) *podTimeline {
	if f.Pod != "" {
		return pods[uidKey(f.Pod)]
	}
	if host, _, err := net.SplitHostPort(f.Endpoint); err == nil {
		return pods[host]
	}
	return nil
}

func attributeOne(f load.Outcome, pods map[string]*podTimeline) string {
	p := podOf(f, pods)
	if p == nil || p.sigterm.IsZero() {
		return CauseOther
	}
	end := f.Sent.Add(f.Latency)
	// Running when the process exited at once: cut. (Through the http balancer a cut reaches the client as a 502.)
	switch f.Class {
	case load.ClassReset, load.ClassEOF, load.ClassHTTP5xx:
		if !p.graceful && !p.exited.IsZero() && !p.exited.Before(f.Sent.Add(-cutSlack)) && !p.exited.After(end.Add(cutSlack)) {
			return CauseInFlightCut
		}
	}
	// Failed at or after the Pod's SIGTERM although routed there, because a node had not yet taken the Pod out of
	// the Service: the server had closed its listener (refused; a tcp balancer passes it on as a reset, an http one
	// as a 502), closed a connection it had accepted but not read yet (eof), or the Pod and its address were gone
	// (no route, timeout). The failure's time counts, not the send's: a request sent a moment before SIGTERM may
	// reach the Pod after it.
	if f.Class != load.ClassHTTP4xx && !end.Before(p.sigterm) {
		return CauseBeforeServiceOut
	}
	return CauseOther
}
