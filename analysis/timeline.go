package analysis

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// RunTimeline is what a case run's results directory keeps of it one by one: the Pods' lifecycle (events.json)
// and the failed requests (failures.json, bounded by attribution.FailureSampleLimit).
type RunTimeline struct {
	Events   []timeline.Event
	Failures attribution.Failures
}

// LoadRunTimeline reads a case run's events.json and failures.json; nil when the run kept neither (a bare attack).
func LoadRunTimeline(dir string) (*RunTimeline, error) {
	var tl RunTimeline
	found := false
	for name, into := range map[string]any{rundir.EventsFile: &tl.Events, rundir.FailuresFile: &tl.Failures} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(data, into); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
		}
		found = true
	}
	if !found {
		return nil, nil
	}
	return &tl, nil
}

// PodLifecycle is one Pod's line on the timeline chart.
type PodLifecycle struct {
	UID, Name, Node, IP string
	Old                 bool // serving before the rollout began (its creation is not in the run's timeline)
	First               time.Time
	Created, Ready      time.Time
	Deletion            time.Time
	PreStop, SIGTERM    time.Time
	Exited              time.Time
	ExitCode            *int
	Marks               []LifecycleMark
}

type LifecycleMark struct {
	Event  string
	At     time.Time
	Detail string
}

// MarkedEvents are the events kept as marks of a Pod's lifecycle (drawn on its row, in this order in the legend).
var MarkedEvents = []string{timeline.EventEndpointNotReady, timeline.EventServiceOut, timeline.EventSIGTERM,
	timeline.EventListenerClosed, timeline.EventSIGKILL, timeline.EventContainerExited}

// Lifecycles follows each Pod through a run's events: the Pods serving before the rollout first, then the new ones, each
// group in the order its Pods appeared.
func Lifecycles(events []timeline.Event, rolloutStart time.Time) []*PodLifecycle {
	byUID := map[string]*PodLifecycle{}
	var rows []*PodLifecycle
	for _, e := range events {
		if e.UID == "" {
			continue
		}
		r := byUID[e.UID]
		if r == nil {
			r = &PodLifecycle{UID: e.UID, Name: e.Pod, Node: e.Node, First: e.Time}
			byUID[e.UID] = r
			rows = append(rows, r)
		}
		if e.PodIP != "" {
			r.IP = e.PodIP
		}
		setOnce := func(t *time.Time) {
			if t.IsZero() {
				*t = e.Time
			}
		}
		switch e.Type {
		case timeline.EventPodCreated:
			setOnce(&r.Created)
		case timeline.EventPodReady:
			setOnce(&r.Ready)
		case timeline.EventDeletionSeen, timeline.EventKilling:
			setOnce(&r.Deletion)
		case timeline.EventPreStopStart:
			setOnce(&r.PreStop)
		case timeline.EventSIGTERM:
			setOnce(&r.SIGTERM)
		case timeline.EventContainerExited:
			if r.Exited.IsZero() {
				r.Exited, r.ExitCode = e.Time, e.ExitCode
			}
		}
		if slices.Contains(MarkedEvents, e.Type) {
			detail := e.Node
			if e.Type == timeline.EventContainerExited && e.ExitCode != nil {
				detail = fmt.Sprintf("code %d", *e.ExitCode)
			}
			r.Marks = append(r.Marks, LifecycleMark{Event: e.Type, At: e.Time, Detail: detail})
		}
	}
	for _, r := range rows {
		r.Old = r.Created.IsZero() || (!rolloutStart.IsZero() && r.Created.Before(rolloutStart))
	}
	slices.SortStableFunc(rows, func(a, b *PodLifecycle) int {
		if a.Old != b.Old {
			if a.Old {
				return -1
			}
			return 1
		}
		return a.First.Compare(b.First)
	})
	return rows
}

// PodTermination is how one Pod ended, as its run's timeline tells it.
type PodTermination struct {
	SIGTERM, ListenerClosed, LastServiceOut, Exited time.Time
	ExitCode                                        *int
	Killed                                          bool // SIGKILL was sent
}

// Terminations lists the Pods of a run that got SIGTERM, old ones first, each in the order it appeared.
func (tl *RunTimeline) Terminations() []PodTermination {
	if tl == nil {
		return nil
	}
	var out []PodTermination
	for _, r := range Lifecycles(tl.Events, time.Time{}) {
		if r.SIGTERM.IsZero() {
			continue
		}
		t := PodTermination{SIGTERM: r.SIGTERM, Exited: r.Exited, ExitCode: r.ExitCode}
		for _, m := range r.Marks {
			switch m.Event {
			case timeline.EventListenerClosed:
				if t.ListenerClosed.IsZero() {
					t.ListenerClosed = m.At
				}
			case timeline.EventServiceOut:
				if m.At.After(t.LastServiceOut) {
					t.LastServiceOut = m.At
				}
			case timeline.EventSIGKILL:
				t.Killed = true
			}
		}
		out = append(out, t)
	}
	return out
}
