package plan

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

//go:embed defaults.yaml
var defaultsYAML []byte

// Plan is a plan resolved: defaults applied and every case expanded with its settings.
type Plan struct {
	Source      string     `yaml:"source" json:"source"`
	Name        string     `yaml:"name" json:"name"`
	Description string     `yaml:"description,omitempty" json:"description,omitempty"`
	Target      Target     `yaml:"target" json:"target"`
	Lab         Lab        `yaml:"lab" json:"lab"`
	Repeats     int        `yaml:"repeats" json:"repeats"`
	Report      Report     `yaml:"report" json:"report"`
	Prometheus  Prometheus `yaml:"prometheus" json:"prometheus"`
	Cases       []Case     `yaml:"cases" json:"cases"`
}

// Case is one condition of the experiment with everything it needs to run.
type Case struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	Settings    `yaml:",inline" json:",inline"`
	// Requests is exactly how many requests the load sends.
	Requests int64 `yaml:"requests" json:"requests"`
}

// DefaultCaseName names the single case of a plan that lists none.
const DefaultCaseName = "default"

// Limits that keep a plan within what one machine can run.
const (
	maxRequests = 100_000_000
	maxDuration = 24 * time.Hour
	maxRepeats  = 100
	maxCases    = 1000
	maxNodes    = 16 // the Pod CIDRs of a lab's cluster CIDR (lab/cni MaxNodes)
	maxNameLen  = 53 // Helm's release name limit; the plan's name is the release name.
)

// LoadFile reads and resolves a plan file.
func LoadFile(path string) (*Plan, error) { return LoadFileWith(path, Overrides{}) }

// LoadFileWith reads and resolves a plan file with command-line overrides.
func LoadFileWith(path string, o Overrides) (*Plan, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseWith(path, data, o)
}

// Overrides are command-line settings laid over a plan before it is validated, so one set of rules judges a value
// whether it came from the file or from a flag; an error about one names the flag.
type Overrides struct {
	// Target's non-empty fields replace the plan's (--target, --kubeconfig, --context, --namespace).
	Target Target
	// LoadURL replaces every case's load.url (--load-url).
	LoadURL string
}

// Parse resolves a plan from its YAML. The error, if any, is an ErrorList holding every problem found.
func Parse(file string, data []byte) (*Plan, error) { return ParseWith(file, data, Overrides{}) }

// ParseWith resolves a plan from its YAML with overrides applied before validation.
func ParseWith(file string, data []byte, o Overrides) (*Plan, error) {
	d := &decoder{file: file, paths: map[*yaml.Node]string{}}
	root, err := parseDocument(file, data)
	if err != nil {
		return nil, err
	}
	d.recordPaths(root, "")

	// First pass over the file alone: unknown fields and wrong types, in the overrides of cases too.
	var spec Spec
	d.decode(root, reflect.ValueOf(&spec).Elem(), "", nil)
	if len(d.errs) > 0 {
		return nil, d.errs.sorted()
	}

	defaults := mustParseDefaults()
	merged := d.mergeNodes(defaults, root)
	var top Spec
	topLoc := located{}
	d.decode(merged, reflect.ValueOf(&top).Elem(), "", topLoc)

	p := &Plan{Source: file, Name: top.Name, Description: top.Description, Target: top.Target, Lab: top.Lab, Repeats: top.Repeats, Report: top.Report, Prometheus: top.Prometheus}
	o.applyTarget(&p.Target)
	d.validateTop(p, topLoc)

	base := settingsNode(merged)
	specs := d.caseOverrides(root, spec)
	names := map[string]*yaml.Node{}
	for _, cs := range specs {
		if prev, dup := names[cs.name]; dup {
			d.errorAt(cs.nameNode, cs.namePath, "case name %q is used twice (first at line %d)", cs.name, prev.Line)
			continue
		}
		names[cs.name] = cs.nameNode
		node := d.mergeNodes(base, cs.override)
		var s Settings
		loc := located{}
		d.decode(node, reflect.ValueOf(&s).Elem(), "", loc)
		c := Case{Name: cs.name, Description: cs.description, Settings: s}
		urlField := "load.url"
		if o.LoadURL != "" {
			c.Load.URL, urlField = o.LoadURL, "load.url (--load-url)"
		}
		v := &validator{d: d, loc: loc, fallback: cs.nameNode}
		c.Requests = v.validateCase(&c)
		v.validateLoadURL(c.Load, p.Target.Kind, urlField)
		p.Cases = append(p.Cases, c)
	}
	if len(d.errs) > 0 {
		return nil, d.errs.sorted()
	}
	return p, nil
}

func (o Overrides) applyTarget(t *Target) {
	for _, f := range []struct {
		over string
		into *string
	}{{o.Target.Kind, &t.Kind}, {o.Target.Kubeconfig, &t.Kubeconfig},
		{o.Target.Context, &t.Context}, {o.Target.Namespace, &t.Namespace}} {
		if f.over != "" {
			*f.into = f.over
		}
	}
}

var yamlLineError = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func parseDocument(file string, data []byte) (root *yaml.Node, err error) {
	defer func() {
		// The YAML library must never take the runner down with it, whatever the input.
		if r := recover(); r != nil {
			root, err = nil, ErrorList{{File: file, Message: fmt.Sprintf("cannot parse YAML: %v", r)}}
		}
	}()
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, ErrorList{{File: file, Message: "the plan is empty"}}
		}
		return nil, syntaxError(file, data, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, ErrorList{{File: file, Line: extra.Line, Column: extra.Column, Message: "a plan file holds one YAML document; found another"}}
	} else if !errors.Is(err, io.EOF) {
		return nil, syntaxError(file, data, err)
	}
	if len(doc.Content) == 0 || isNull(resolveAlias(doc.Content[0])) {
		return nil, ErrorList{{File: file, Line: doc.Line, Message: "the plan is empty"}}
	}
	root = resolveAlias(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		return nil, ErrorList{{File: file, Line: root.Line, Column: root.Column, Message: "a plan is a mapping of fields (name, app, load, ...), got " + describe(root)}}
	}
	return root, nil
}

func syntaxError(file string, data []byte, err error) error {
	e := Error{File: file, Message: "YAML syntax: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	if m := yamlLineError.FindStringSubmatch(err.Error()); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Message = "YAML syntax: " + m[2]
		if strings.HasPrefix(m[2], "did not find expected") {
			e.Line++ // the library counts the lines of its parser's errors from 0, those of its scanner from 1
		}
		lines := strings.Split(string(data), "\n")
		for _, n := range []int{e.Line - 1, e.Line} { // the library counts some errors from the line after
			if n >= 1 && n <= len(lines) && strings.Contains(lines[n-1], "\t") {
				e.Line = n
				e.Message += " (a tab? YAML indents with spaces only)"
				break
			}
		}
	}
	return ErrorList{e}
}

func mustParseDefaults() *yaml.Node {
	var doc yaml.Node
	if err := yaml.Unmarshal(defaultsYAML, &doc); err != nil {
		panic(fmt.Sprintf("plan: built-in defaults: %v", err))
	}
	clearPositions(&doc)
	return doc.Content[0]
}

// clearPositions marks nodes as not from the user's file, so errors about them name no line of it.
func clearPositions(n *yaml.Node) {
	n.Line, n.Column = 0, 0
	for _, c := range n.Content {
		clearPositions(c)
	}
}

// settingsNode picks the settings fields out of a plan mapping.
func settingsNode(n *yaml.Node) *yaml.Node {
	out := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for _, key := range []string{"app", "load", "rollout", "expect"} {
		if k, v := mappingValue(n, key); k != nil {
			out.Content = append(out.Content, k, v)
		}
	}
	return out
}

type caseOverride struct {
	name, description string
	nameNode          *yaml.Node
	namePath          string
	override          *yaml.Node
}

// caseOverrides lists the cases as written and as the matrix generates them, each with its settings override.
func (d *decoder) caseOverrides(root *yaml.Node, spec Spec) []caseOverride {
	_, casesNode := mappingValue(root, "cases")
	_, matrixNode := mappingValue(root, "matrix")
	var out []caseOverride
	if casesNode != nil && casesNode.Kind == yaml.SequenceNode && len(casesNode.Content) > maxCases {
		d.errorAt(casesNode, "cases", "more than %d cases", maxCases)
		return nil
	}
	if casesNode != nil && casesNode.Kind == yaml.SequenceNode {
		for i, item := range casesNode.Content {
			item = resolveAlias(item)
			_, nameNode := mappingValue(item, "name")
			path := fmt.Sprintf("cases[%d].name", i)
			if nameNode == nil || spec.Cases[i].Name == "" {
				d.errorAt(item, path, "every case needs a name")
				continue
			}
			if !validCaseName(spec.Cases[i].Name) {
				d.errorAt(nameNode, path, "case name %q: use lower-case letters, digits, '-', '_' or '.', start and end with a letter or digit, at most 63 characters", spec.Cases[i].Name)
			}
			out = append(out, caseOverride{name: spec.Cases[i].Name, description: spec.Cases[i].Description,
				nameNode: nameNode, namePath: path, override: settingsNode(item)})
		}
	}
	if matrixNode != nil {
		out = append(out, d.expandMatrix(matrixNode)...)
	}
	if casesNode == nil && matrixNode == nil {
		out = append(out, caseOverride{name: DefaultCaseName, override: &yaml.Node{Kind: yaml.MappingNode}})
	}
	if len(out) == 0 && len(d.errs) == 0 {
		d.errorAt(casesNode, "cases", "the plan has no case: list at least one, or leave cases out for a single default case")
	}
	return out
}

var caseNamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

func validCaseName(s string) bool { return caseNamePattern.MatchString(s) }

var invalidNameRunes = regexp.MustCompile(`[^a-z0-9._-]+`)

// expandMatrix generates the cross product of matrix.params as case overrides.
func (d *decoder) expandMatrix(matrix *yaml.Node) []caseOverride {
	_, params := mappingValue(matrix, "params")
	_, nameNode := mappingValue(matrix, "name")
	if params == nil || params.Kind != yaml.MappingNode || len(params.Content) == 0 {
		d.errorAt(matrix, "matrix.params", "the matrix needs params: a settings field path mapped to a list of values")
		return nil
	}
	type axis struct {
		path   []string
		values []*yaml.Node
	}
	var axes []axis
	for i := 0; i+1 < len(params.Content); i += 2 {
		key, values := params.Content[i], resolveAlias(params.Content[i+1])
		fieldPath := "matrix.params." + key.Value
		path := strings.Split(key.Value, ".")
		if !settingsFieldExists(path) {
			d.errorAt(key, fieldPath, "%q is not a settings field (a path under app, load, rollout or expect, such as app.preStop.sleep)", key.Value)
			continue
		}
		if values.Kind != yaml.SequenceNode || len(values.Content) == 0 {
			d.errorAt(values, fieldPath, "want a non-empty list of values, got %s", describe(values))
			continue
		}
		axes = append(axes, axis{path: path, values: values.Content})
	}
	if len(axes) == 0 {
		return nil
	}
	combinations := 1
	for _, a := range axes {
		combinations *= len(a.values)
		if combinations > maxCases {
			d.errorAt(params, "matrix.params", "the matrix makes more than %d cases", maxCases)
			return nil
		}
	}
	template := ""
	if nameNode != nil {
		template = nameNode.Value
	} else {
		for _, a := range axes {
			template += "-" + a.path[len(a.path)-1] + "-{" + strings.Join(a.path, ".") + "}"
		}
		template = strings.TrimPrefix(template, "-")
	}
	var out []caseOverride
	combination := make([]int, len(axes))
	for {
		override := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		name := template
		for i, a := range axes {
			value := resolveAlias(a.values[combination[i]])
			setPath(override, a.path, value)
			name = strings.ReplaceAll(name, "{"+strings.Join(a.path, ".")+"}", value.Value)
		}
		name = strings.Trim(invalidNameRunes.ReplaceAllString(strings.ToLower(name), "-"), "-._")
		anchor := nameNode
		if anchor == nil {
			anchor = matrix
		}
		if !validCaseName(name) {
			d.errorAt(anchor, "matrix.name", "generated case name %q is not valid: use lower-case letters, digits, '-', '_' or '.', at most 63 characters", name)
		}
		out = append(out, caseOverride{name: name, nameNode: anchor, namePath: "matrix.name", override: override})
		// Advance the odometer; the last axis varies fastest.
		i := len(axes) - 1
		for ; i >= 0; i-- {
			combination[i]++
			if combination[i] < len(axes[i].values) {
				break
			}
			combination[i] = 0
		}
		if i < 0 {
			return out
		}
	}
}

func setPath(n *yaml.Node, path []string, value *yaml.Node) {
	for _, field := range path[:len(path)-1] {
		_, next := mappingValue(n, field)
		if next == nil {
			next = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
			n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: field}, next)
		}
		n = next
	}
	n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: path[len(path)-1]}, value)
}

// settingsFieldExists says whether a dotted path names a field of Settings (anything under app.values is free).
func settingsFieldExists(path []string) bool {
	t := reflect.TypeFor[Settings]()
	for _, field := range path {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t == rawValuesType {
			return true
		}
		if t.Kind() != reflect.Struct {
			return false
		}
		fields, _ := yamlFields(t)
		idx, ok := fields[field]
		if !ok {
			return false
		}
		t = t.FieldByIndex(idx).Type
	}
	return true
}

// TotalDuration is the length of the load: the stages' sum, or the constant rate's duration.
func (l Load) TotalDuration() time.Duration {
	if len(l.Stages) == 0 {
		return l.Duration.D()
	}
	var total time.Duration
	for _, s := range l.Stages {
		total += s.Duration.D()
	}
	return total
}

// Requests is exactly how many requests the schedule sends: the integral of the arrival rate over the load,
// rounded down (for the reference profile 1→200 over 60 s, hold 60 s, 200→1 over 60 s: 6030+12000+6030 = 24060).
// The load's pacer sends exactly this many.
func (l Load) Requests() int64 {
	return int64(math.Floor(min(Arrivals(l.Segments()), maxRequests+1)))
}

// Segment is a linear piece of the arrival rate: from From to To arrivals/s over Duration.
type Segment struct {
	Duration time.Duration
	From, To float64
}

// ArrivalsBy is the integral of the segment's rate over its first tau.
func (s Segment) ArrivalsBy(tau time.Duration) float64 {
	t, d := tau.Seconds(), s.Duration.Seconds()
	return s.From*t + (s.To-s.From)/(2*d)*t*t
}

// Segments is the load's arrival rate as linear pieces: its stages, or its constant rate as one flat piece.
func (l Load) Segments() []Segment {
	if len(l.Stages) == 0 {
		return []Segment{{Duration: l.Duration.D(), From: l.Rate, To: l.Rate}}
	}
	segments := make([]Segment, 0, len(l.Stages))
	from := l.StartRate
	for _, s := range l.Stages {
		segments = append(segments, Segment{Duration: s.Duration.D(), From: from, To: s.Target})
		from = s.Target
	}
	return segments
}

// MaxRate is the highest arrival rate the load asks for.
func (l Load) MaxRate() float64 {
	peak := 0.0
	for _, s := range l.Segments() {
		peak = max(peak, s.From, s.To)
	}
	return peak
}

// Arrivals is the integral of the rate over the segments, with a hair of slack: rates and durations written in
// decimal are not exact in binary, and 24060 must not become 24059 when rounded down.
func Arrivals(segments []Segment) float64 {
	total := 0.0
	for _, s := range segments {
		if s.Duration > 0 {
			total += s.ArrivalsBy(s.Duration)
		}
	}
	return total + 1e-6
}

// RolloutAt is when the restart happens, from the load's start.
func (c Case) RolloutAt() time.Duration {
	if c.Rollout.At != nil {
		return c.Rollout.At.D()
	}
	return c.Load.TotalDuration() / 2
}

// Namespace is where the plan's release lives: target.namespace, or the plan's name.
func (p *Plan) Namespace() string {
	if p.Target.Namespace != "" {
		return p.Target.Namespace
	}
	return p.Name
}

// Case finds a case by name.
func (p *Plan) Case(name string) (Case, bool) {
	for _, c := range p.Cases {
		if c.Name == name {
			return c, true
		}
	}
	return Case{}, false
}

// Share is one of n equal shares of the load, for n workers: every rate divided by n.
func (l Load) Share(n int) Load {
	l.Rate /= float64(n)
	l.StartRate /= float64(n)
	l.Stages = append([]Stage(nil), l.Stages...)
	for i := range l.Stages {
		l.Stages[i].Target /= float64(n)
	}
	return l
}

// Redacted is a copy of the plan fit to store with results: passwords in URLs (load.url, prometheus.url) are
// replaced by "xxxxx", as url.URL.Redacted does.
func (p *Plan) Redacted() *Plan {
	out := *p
	out.Prometheus.URL = RedactURL(p.Prometheus.URL)
	out.Cases = make([]Case, len(p.Cases))
	for i, c := range p.Cases {
		c.Load.URL = RedactURL(c.Load.URL)
		out.Cases[i] = c
	}
	return &out
}

// RedactURL hides the password of a URL; text that does not parse loses everything before its last "@" (where a
// password would be), other text comes back as it is.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		if at := strings.LastIndex(raw, "@"); at >= 0 {
			return "xxxxx" + raw[at:]
		}
		return raw
	}
	if u.User == nil {
		return raw
	}
	return u.Redacted()
}
