// Package timeline owns what happens to Pods during a rollout: the lifecycle events (deletion seen, endpoint not
// ready, each node's service-out, preStop, SIGTERM, listener closed, exit…), their recorder, their metrics, and
// what "endpoint ready" means. The lab's node agent and dataplane feed it; on a cluster the watches do
// (timeline/clusterwatch); the attribution of failed requests reads it.
package timeline

import (
	"encoding/json"
	"os"
	"sync"
	"time"
)

// Lifecycle steps the node agent records.
const (
	EventPodCreated      = "created"
	EventContainerStart  = "started"
	EventPodReady        = "ready"
	EventPodNotReady     = "not_ready"
	EventDeletionSeen    = "deletion_seen"
	EventPreStopStart    = "prestop_start"
	EventPreStopEnd      = "prestop_end"
	EventSIGTERM         = "sigterm"
	EventSIGKILL         = "sigkill"
	EventContainerExited = "exited"
	EventPodRemoved      = "removed"
	EventRestarted       = "restarted"
	// EventListenerClosed is the app's own record (its JSON log line "event":"listener_closed") of closing its listener.
	EventListenerClosed = "listener_closed"
	// EventKilling is the kubelet's "Killing" Event on a real cluster: it begins the preStop hook, then SIGTERM.
	EventKilling = "killing"
	// EventEndpointNotReady is the EndpointSlice controller marking the Pod's endpoint not ready (terminating).
	EventEndpointNotReady = "endpoint_not_ready"
	// EventServiceOut is a node's proxy no longer routing new connections to the Pod.
	EventServiceOut = "service_out"
)

// Event is one step in a Pod's life as the node agent saw it.
type Event struct {
	Time time.Time `json:"time"`
	// Since is the monotonic time since the agent started, for ordering events exactly.
	Since     time.Duration `json:"sinceAgentStart"`
	Type      string        `json:"type"`
	Namespace string        `json:"namespace"`
	Pod       string        `json:"pod"`
	UID       string        `json:"uid"`
	Node      string        `json:"node"`
	PodIP     string        `json:"podIP,omitempty"`
	Container string        `json:"container,omitempty"`
	ExitCode  *int          `json:"exitCode,omitempty"`
	Signal    string        `json:"signal,omitempty"`
	Message   string        `json:"message,omitempty"`
	// SinceDeletion is, for service_out, the time since the node agent saw the Pod's deletion.
	SinceDeletion time.Duration `json:"sinceDeletion,omitempty"`
	// InFlight is, on sigterm and exited in a run's events.json, how many of the load's requests routed to the Pod
	// were in flight at that moment (counted from the attacker's side).
	InFlight *uint64 `json:"inFlight,omitempty"`
}

// Recorder keeps events in a JSON-lines file, counts them in its metrics, and hands them to subscribers.
type Recorder struct {
	start    time.Time
	metrics  *Metrics
	deletion map[string]time.Time // Pod UID → when its deletion was seen
	mu       sync.Mutex
	file     *os.File
	enc      *json.Encoder
	subs     map[int]chan Event
	next     int
}

// NewRecorder appends events to path and counts them in metrics (nil: not counted).
func NewRecorder(path string, metrics *Metrics) (*Recorder, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &Recorder{start: time.Now(), metrics: metrics, file: f, enc: json.NewEncoder(f), subs: map[int]chan Event{}, deletion: map[string]time.Time{}}, nil
}

// Record stamps and stores an event; an event that carries its own time (the app logged it) keeps it.
func (r *Recorder) Record(e Event) Event {
	now := time.Now()
	if e.Time.IsZero() {
		e.Time = now
	}
	e.Since = e.Time.Sub(r.start)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch e.Type {
	case EventDeletionSeen:
		r.deletion[e.UID] = now
	case EventServiceOut:
		if seen, ok := r.deletion[e.UID]; ok {
			e.SinceDeletion = e.Time.Sub(seen)
		}
	}
	r.metrics.observe(e)
	_ = r.enc.Encode(e)
	for _, ch := range r.subs {
		select {
		case ch <- e:
		default: // a subscriber that does not keep up loses events rather than stalling Pods
		}
	}
	return e
}

// Subscribe returns a channel of every event from now on and a function that ends the subscription.
func (r *Recorder) Subscribe(buffer int) (<-chan Event, func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := r.next
	r.next++
	ch := make(chan Event, buffer)
	r.subs[id] = ch
	return ch, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if _, ok := r.subs[id]; ok {
			delete(r.subs, id)
			close(ch)
		}
	}
}

// Close closes the file.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.file.Close()
}

// Started is when the recorder started: events' Since counts from it.
func (r *Recorder) Started() time.Time { return r.start }
