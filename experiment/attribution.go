package experiment

import (
	"net"
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
	pods := map[string]*podTimeline{} // by Pod IP
	for _, e := range events {
		if e.PodIP == "" || e.Type == lab.EventServiceOut {
			continue
		}
		p := pods[e.PodIP]
		if p == nil {
			p = &podTimeline{}
			pods[e.PodIP] = p
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
	out := Attribution{}
	for _, f := range failures {
		phase := attributeOne(f, pods)
		if out[phase] == nil {
			out[phase] = map[string]uint64{}
		}
		out[phase][f.Class]++
	}
	return out
}

func attributeOne(f load.Outcome, pods map[string]*podTimeline) string {
	host, _, err := net.SplitHostPort(f.Endpoint)
	if err != nil {
		return analysis.PhaseOther
	}
	p := pods[host]
	if p == nil || p.sigterm.IsZero() {
		return analysis.PhaseOther
	}
	switch f.Class {
	case load.ClassRefused, load.ClassTimeout, load.ClassOther:
		// Sent after SIGTERM yet routed there: the server had closed its listener (refused), or the Pod and its
		// address were already gone (no route, timeout), because a node had not yet taken it out of the Service.
		if !f.Sent.Before(p.sigterm) {
			return analysis.PhaseBeforeServiceOut
		}
	case load.ClassReset, load.ClassEOF:
		end := f.Sent.Add(f.Latency)
		if !p.graceful && !p.exited.IsZero() && !p.exited.Before(f.Sent.Add(-cutSlack)) && !p.exited.After(end.Add(cutSlack)) {
			return analysis.PhaseInFlightCut
		}
	}
	return analysis.PhaseOther
}
