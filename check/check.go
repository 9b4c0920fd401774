// Package check answers, for any app, whether it survives a rolling update: it writes a plan whose cases each expose
// one behaviour of the app's shutdown, and reads the verdicts from the run's report and timeline.
package check

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/rollout-lab/rollout-lab/internal/wellknown"
	"github.com/rollout-lab/rollout-lab/plan"
)

// AppImage is the image name the lab plays with the app's command when the check is given a command.
const AppImage = "rollout-lab.local/check-app"

// Options say what app to check and how to load it.
type Options struct {
	// Command is the app's argv (after `--`); or Image, an image the lab maps (Images) or a cluster pulls.
	Command []string
	Image   string
	Images  map[string][]string
	// Port is where the app listens; Path, Method and Body the request the load sends.
	Port               int
	Path, Method, Body string
	Health             string // the readiness probe's path; empty: a TCP connect to Port
	Replicas           int
	Grace              time.Duration // terminationGracePeriodSeconds
	Timeout            time.Duration // each request's
	PreStop            time.Duration // the preStop sleep the app's Deployment has (0: none)
	Lang               string        // the report's language (default en)
}

// Defaults of a check: small, short, and long enough for each behaviour to show.
const (
	DefaultReplicas = 3
	DefaultGrace    = 30 * time.Second
	DefaultTimeout  = 10 * time.Second
	DefaultPort     = 8080
	// loadDuration covers the rollout of 3 replicas (one at a time) and the old Pods' terminations; rolloutAt
	// leaves the Pods a moment of load first.
	loadDuration = 10 * time.Second
	rolloutAt    = 2 * time.Second
)

// Case names: each exposes one behaviour.
const (
	// CaseAccept: a new connection per request through a tcp balancer, the app's own preStop: does it keep
	// accepting until it is out of the Service?
	CaseAccept = "accept"
	// CaseInFlight: pooled connections through an http balancer at a rate that keeps requests in flight at
	// SIGTERM: does it finish them?
	CaseInFlight = "in-flight"
	// CaseIdle: pooled connections idle most of the time: does it close them without a request racing the close?
	CaseIdle = "idle"
	// sweepPrefix names the accept cases with a preStop sleep (accept-slp1s…): the smallest sleep it needs.
	sweepPrefix = CaseAccept + "-slp"
)

// SweptSleeps are the preStop sleeps the check tries on top of the app's own, to find the smallest it needs.
var SweptSleeps = []time.Duration{time.Second, 2 * time.Second}

// Plan writes the check's plan: one case per behaviour, and the accept case again with each swept preStop sleep.
// It goes through the plan format like any plan file (the overrides laid over it, as apply's flags), so `runner
// apply` runs it as it is.
func Plan(o Options, overrides plan.Overrides) (*plan.Plan, []byte, error) {
	o = o.withDefaults()
	image, images := o.Image, o.Images
	if len(o.Command) > 0 {
		if image != "" {
			return nil, nil, fmt.Errorf("give the app's command after -- or --image, not both")
		}
		image, images = AppImage, map[string][]string{AppImage: o.Command}
	}
	if image == "" {
		return nil, nil, fmt.Errorf("no app: give its command after -- (runner check -- ./server --port 8080) or --image")
	}
	doc := planDocument(o, image, images)
	doc["cases"] = checkCases(o)
	node, err := ordered(doc, "name", "description", "lab", "app", "load", "rollout", "report", "cases")
	if err != nil {
		return nil, nil, err
	}
	data, err := yaml.Marshal(node)
	if err != nil {
		return nil, nil, err
	}
	data = append([]byte("# Written by runner check: run it with `runner apply FILE`.\n"), data...)
	p, err := plan.ParseWith("check.yaml", data, overrides)
	if err != nil {
		return nil, data, fmt.Errorf("the check's plan: %w", err)
	}
	return p, data, nil
}

func (o Options) withDefaults() Options {
	if o.Replicas == 0 {
		o.Replicas = DefaultReplicas
	}
	if o.Grace == 0 {
		o.Grace = DefaultGrace
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.Path == "" {
		o.Path = "/"
	}
	if o.Method == "" {
		o.Method = "GET"
	}
	return o
}

// planDocument is the plan's common part: the app as a Deployment of image, the load, the rollout, the report.
func planDocument(o Options, image string, images map[string][]string) map[string]any {
	repository, tag := image, "latest"
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		repository, tag = image[:i], image[i+1:]
	}
	doc := map[string]any{
		"name":        "check",
		"description": "shutdown check of " + describe(o, image),
		"app": map[string]any{
			"replicas":               o.Replicas,
			"port":                   o.Port,
			"slow":                   false,
			"image":                  map[string]any{"repository": repository, "tag": tag, "command": []string{filepath.Base(repository)}},
			"terminationGracePeriod": o.Grace.String(),
			"preStop":                map[string]any{"sleep": seconds(o.PreStop), "action": plan.PreStopSleep},
			"probes": map[string]any{
				"readiness": map[string]any{"path": o.Health, "initialDelay": "0s", "period": "1s"},
				"liveness":  map[string]any{"enabled": false},
			},
			"values": map[string]any{"app": map[string]any{"cowwebFlags": false}},
		},
		"load": map[string]any{"path": o.Path, "method": o.Method, "timeout": o.Timeout.String(), "rate": 20,
			"duration": loadDuration.String(), "connection": plan.ConnectionPerUser},
		"rollout": map[string]any{"at": rolloutAt.String(), "timeout": (2*o.Grace + time.Minute).String()},
		"report":  map[string]any{"lang": "en"},
		"lab":     map[string]any{"nodes": 2},
	}
	if o.Body != "" {
		doc["load"].(map[string]any)["body"] = o.Body
	}
	if o.Lang != "" {
		doc["report"] = map[string]any{"lang": o.Lang}
	}
	if len(images) > 0 {
		doc["lab"].(map[string]any)["images"] = images
	}
	return doc
}

// checkCases are the cases in the order they run: accept first, whose latency sizes the in-flight case's load
// (TuneInFlight), then the sweep of preStop sleeps longer than the app's own.
func checkCases(o Options) []any {
	protocol := func(p string) map[string]any {
		return map[string]any{"service": map[string]any{"annotations": map[string]any{wellknown.BackendProtocolAnnotation: p}}}
	}
	cases := []any{
		map[string]any{"name": CaseAccept, "description": "a new connection per request through a tcp balancer: does it keep accepting until it is out of the Service?",
			"app": map[string]any{"values": protocol("TCP")}},
		map[string]any{"name": CaseInFlight, "description": "pooled connections through an http balancer, requests in flight at SIGTERM: does it finish them?",
			"load": map[string]any{"connection": plan.ConnectionPooled, "rate": 40}, "app": map[string]any{"values": protocol("HTTP")}},
		map[string]any{"name": CaseIdle, "description": "pooled connections through an http balancer, idle at SIGTERM: does it close them cleanly?",
			"load": map[string]any{"connection": plan.ConnectionPooled, "rate": 2}, "app": map[string]any{"values": protocol("HTTP")}},
	}
	for _, sleep := range SweptSleeps {
		if sleep <= o.PreStop {
			continue
		}
		cases = append(cases, map[string]any{"name": sweepPrefix + seconds(sleep),
			"description": "the accept case with a preStop sleep of " + seconds(sleep),
			"app":         map[string]any{"values": protocol("TCP"), "preStop": map[string]any{"sleep": seconds(sleep)}}})
	}
	return cases
}

func describe(o Options, image string) string {
	if len(o.Command) > 0 {
		return strings.Join(o.Command, " ")
	}
	return image
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s" }

// sweepSleep reads the preStop sleep of a sweep case's name, or false.
func sweepSleep(caseName string) (time.Duration, bool) {
	s, ok := strings.CutPrefix(caseName, sweepPrefix)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	return d, err == nil && slices.Contains(SweptSleeps, d)
}

// ordered writes a plan's map with its keys in the order a person writes them (the rest after, sorted), and its
// cases with their name first: what --print-plan shows is read before it is run.
func ordered(m map[string]any, first ...string) (*yaml.Node, error) {
	node := &yaml.Node{Kind: yaml.MappingNode}
	keys := append([]string(nil), first...)
	var rest []string
	for k := range m {
		if !slices.Contains(first, k) {
			rest = append(rest, k)
		}
	}
	slices.Sort(rest)
	for _, k := range append(keys, rest...) {
		v, ok := m[k]
		if !ok {
			continue
		}
		var value yaml.Node
		switch v := v.(type) {
		case []any:
			value.Kind = yaml.SequenceNode
			for _, item := range v {
				n := &yaml.Node{}
				var err error
				if c, ok := item.(map[string]any); ok {
					n, err = ordered(c, "name", "description")
				} else {
					err = n.Encode(item)
				}
				if err != nil {
					return nil, err
				}
				value.Content = append(value.Content, n)
			}
		default:
			if err := value.Encode(v); err != nil {
				return nil, fmt.Errorf("the check's plan, %s: %w", k, err)
			}
		}
		node.Content = append(node.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, &value)
	}
	return node, nil
}
