package plan

import (
	"k8s.io/apimachinery/pkg/api/resource"

	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// decoder turns YAML nodes into plan structs strictly: unknown fields, duplicate keys and wrong types are errors,
// and every error is collected (with the node's position and field path) instead of stopping at the first.
type decoder struct {
	file  string
	paths map[*yaml.Node]string // where each node of the user's file sits, e.g. cases[1].app.replicas
	errs  ErrorList
	work  int // nodes visited; aliases can make a small file expand without bound
}

// maxWork bounds the nodes visited while decoding and merging one plan.
const maxWork = 1_000_000

// spend counts visited nodes and reports, once, a plan whose aliases expand too far.
func (d *decoder) spend(n *yaml.Node) bool {
	d.work++
	if d.work == maxWork {
		d.errorAt(n, "", "the plan expands to more than %d YAML nodes (through aliases?)", maxWork)
	}
	return d.work < maxWork
}

// located records which node gave each field its value, by field path relative to the decoded struct.
type located map[string]*yaml.Node

func (d *decoder) errorAt(n *yaml.Node, path, format string, args ...any) {
	if shown, ok := d.paths[n]; ok {
		path = shown
	}
	e := Error{File: d.file, Field: path, Message: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

var (
	durationType     = reflect.TypeFor[Duration]()
	intOrPercentType = reflect.TypeFor[IntOrPercent]()
	milliCPUType     = reflect.TypeFor[MilliCPU]()
	quantityType     = reflect.TypeFor[Quantity]()
	rawValuesType    = reflect.TypeFor[map[string]any]()
	imagesType       = reflect.TypeFor[map[string][]string]()
	retiredType      = reflect.TypeFor[Retired]()
	timeType         = reflect.TypeFor[time.Time]()
)

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	tag := strings.TrimPrefix(n.Tag, "!!")
	if tag == "str" {
		return fmt.Sprintf("the string %q", n.Value)
	}
	return fmt.Sprintf("%s %s", tag, n.Value)
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// retiredFields say what replaced a field that plans no longer have.
var retiredFields = map[string]string{
	"lab.serviceOut": "retired: the lab runs the real kube-proxy on every node and measures service-out; set " +
		"lab.kubeProxy {mode, minSyncPeriod, syncPeriod} as a cluster's KubeProxyConfiguration does " +
		"(e.g. kubeProxy: {minSyncPeriod: 10s} for GKE's --iptables-min-sync-period)",
}

// decode sets v from n. A null node leaves v as it is, so defaults merged underneath stay. One switch over the
// plan's value types, each case with its own error wording, kept together so every type reads the same way.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string, loc located) {
	n = resolveAlias(n)
	if !d.spend(n) {
		return
	}
	if loc != nil {
		loc[path] = n
	}
	if isNull(n) {
		return
	}
	if d.decodeSpecial(n, v, path, loc) {
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path, loc)
	case reflect.Struct:
		d.decodeStruct(n, v, path, loc)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorAt(n, path, "want a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i), loc)
		}
		v.Set(s)
	default:
		d.decodeScalar(n, v, path)
	}
}

// decodeSpecial decodes the project's own value types (durations, CPU, quantities, images, raw Helm values, retired
// fields) and says whether v was one.
func (d *decoder) decodeSpecial(n *yaml.Node, v reflect.Value, path string, loc located) bool {
	switch v.Type() {
	case profileType:
		d.decodeProfile(n, v, path, loc)
		return true
	case retiredType:
		d.errorAt(n, path, "%s", retiredFields[path])
		return true
	case timeType:
		t, err := time.Parse(time.RFC3339Nano, n.Value)
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!timestamp" && n.Tag != "!!str") || err != nil {
			d.errorAt(n, path, "want a time such as 2026-12-06T12:00:00Z, got %s", describe(n))
			return true
		}
		v.Set(reflect.ValueOf(t))
		return true
	case durationType:
		d.decodeDuration(n, v, path)
		return true
	case milliCPUType:
		milli, err := parseMilliCPU(n)
		if err != nil {
			d.errorAt(n, path, "%v", err)
			return true
		}
		v.SetInt(milli)
		return true
	case quantityType:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int") {
			d.errorAt(n, path, "want a quantity such as 256Mi, got %s", describe(n))
			return true
		}
		if _, err := resource.ParseQuantity(n.Value); err != nil {
			d.errorAt(n, path, "want a quantity such as 256Mi, got %q", n.Value)
			return true
		}
		v.SetString(n.Value)
		return true
	case intOrPercentType:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
			d.errorAt(n, path, "want an integer or a percentage such as 25%%, got %s", describe(n))
			return true
		}
		v.SetString(n.Value)
		return true
	case imagesType:
		if n.Kind != yaml.MappingNode {
			d.errorAt(n, path, "want a mapping of image to command, got %s", describe(n))
			return true
		}
		m := map[string][]string{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			var argv []string
			d.decode(n.Content[i+1], reflect.ValueOf(&argv).Elem(), join(path, n.Content[i].Value), loc)
			m[n.Content[i].Value] = argv
		}
		v.Set(reflect.ValueOf(m))
		return true
	case rawValuesType:
		if n.Kind != yaml.MappingNode {
			d.errorAt(n, path, "want a mapping of Helm values, got %s", describe(n))
			return true
		}
		var m map[string]any
		if err := n.Decode(&m); err != nil {
			d.errorAt(n, path, "%v", err)
			return true
		}
		v.Set(reflect.ValueOf(m))
		return true
	}
	return false
}

// decodeScalar decodes a string, an integer, a number or a boolean, each only from YAML of its own kind.
func (d *decoder) decodeScalar(n *yaml.Node, v reflect.Value, path string) {
	switch v.Kind() {
	case reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			d.errorAt(n, path, "want a string, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int, reflect.Int64:
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || err != nil {
			d.errorAt(n, path, "want an integer, got %s", describe(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		f, err := strconv.ParseFloat(n.Value, 64)
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || err != nil {
			d.errorAt(n, path, "want a number, got %s", describe(n))
			return
		}
		v.SetFloat(f)
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || err != nil {
			d.errorAt(n, path, "want true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	default:
		panic(fmt.Sprintf("plan: no decoding for %s", v.Type()))
	}
}

// parseMilliCPU reads CPU as Kubernetes writes it: cores (1, 1.5) or milli-CPU ("500m").
func parseMilliCPU(n *yaml.Node) (int64, error) {
	const want = "want CPU as Kubernetes writes it, such as 500m, 1 or 1.5"
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float") {
		return 0, fmt.Errorf("%s, got %s", want, describe(n))
	}
	q, err := resource.ParseQuantity(n.Value)
	if err != nil {
		return 0, fmt.Errorf("%s, got %q", want, n.Value)
	}
	if q.Sign() < 0 {
		return 0, fmt.Errorf("must not be negative, got %s", n.Value)
	}
	return q.MilliValue(), nil
}

func (d *decoder) decodeDuration(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" && n.Value == "0" {
		v.SetInt(0)
		return
	}
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		d.errorAt(n, path, "want a duration with a unit such as 8s or 1m30s, got %s", describe(n))
		return
	}
	parsed, err := time.ParseDuration(n.Value)
	if err != nil {
		d.errorAt(n, path, "want a duration with a unit such as 8s or 1m30s, got %q", n.Value)
		return
	}
	v.SetInt(int64(parsed))
}

// yamlFields maps each yaml key of a struct type to its field index path, inline structs included.
func yamlFields(t reflect.Type) (map[string][]int, []string) {
	fields := map[string][]int{}
	var names []string
	for i := range t.NumField() {
		name, opts, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if opts == "inline" {
			inner, innerNames := yamlFields(t.Field(i).Type)
			for k, idx := range inner {
				fields[k] = append([]int{i}, idx...)
			}
			names = append(names, innerNames...)
			continue
		}
		if name == "" || name == "-" {
			continue
		}
		fields[name] = []int{i}
		names = append(names, name)
	}
	return fields, names
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string, loc located) {
	if n.Kind != yaml.MappingNode {
		d.errorAt(n, path, "want a mapping, got %s", describe(n))
		return
	}
	fields, names := yamlFields(v.Type())
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, value := n.Content[i], n.Content[i+1]
		fieldPath := join(path, key.Value)
		if seen[key.Value] {
			d.errorAt(key, fieldPath, "field %q is set twice in this mapping", key.Value)
			continue
		}
		seen[key.Value] = true
		idx, ok := fields[key.Value]
		if !ok {
			d.errorAt(key, fieldPath, "unknown field %q (known here: %s)", key.Value, strings.Join(names, ", "))
			continue
		}
		d.decode(value, v.FieldByIndex(idx), fieldPath, loc)
	}
}

// mergeNodes lays over on top of base: mappings merge key by key, anything else is replaced.
// Nodes are shared, not copied, so positions and paths still point into the file they came from.
func (d *decoder) mergeNodes(base, over *yaml.Node) *yaml.Node {
	base, over = resolveAlias(base), resolveAlias(over)
	if !d.spend(over) {
		return over
	}
	if base == nil {
		return over
	}
	if over == nil {
		return base
	}
	if base.Kind != yaml.MappingNode || over.Kind != yaml.MappingNode {
		return over
	}
	merged := *base
	merged.Line, merged.Column = over.Line, over.Column // point errors at what the file wrote, not at the defaults
	merged.Content = slices.Clone(base.Content)
	for i := 0; i+1 < len(over.Content); i += 2 {
		key, value := over.Content[i], over.Content[i+1]
		replaced := false
		for j := 0; j+1 < len(merged.Content); j += 2 {
			if merged.Content[j].Value == key.Value {
				merged.Content[j], merged.Content[j+1] = key, d.mergeNodes(merged.Content[j+1], value)
				replaced = true
				break
			}
		}
		if !replaced {
			merged.Content = append(merged.Content, key, value)
		}
	}
	return &merged
}

// mappingValue returns the value node of key in a mapping node, or nil.
func mappingValue(n *yaml.Node, key string) (keyNode, value *yaml.Node) {
	n = resolveAlias(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i], resolveAlias(n.Content[i+1])
		}
	}
	return nil, nil
}

// recordPaths remembers the field path of every node in the user's file, for error messages.
func (d *decoder) recordPaths(n *yaml.Node, path string) {
	n = resolveAlias(n)
	if n == nil {
		return
	}
	if _, ok := d.paths[n]; ok {
		return
	}
	d.paths[n] = path
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			field := join(path, n.Content[i].Value)
			d.paths[n.Content[i]] = field
			d.recordPaths(n.Content[i+1], field)
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			d.recordPaths(item, fmt.Sprintf("%s[%d]", path, i))
		}
	}
}
