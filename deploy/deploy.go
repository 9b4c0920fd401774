// Package deploy holds what runs next to rollout-lab rather than in it — the Grafana dashboards and their
// provisioning, the Prometheus configuration of docker-compose.yaml, the runner's RBAC for real clusters — and
// reads the dashboards' queries so tests can check them against Prometheus' parser and a finished run.
package deploy

import (
	"embed"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
)

//go:embed grafana/dashboards/*.json
var dashboards embed.FS

// Query is one PromQL expression of a dashboard and where it sits.
type Query struct {
	Where string // "panel <title>", "annotation <name>" or "variable <name>"
	Expr  string
}

// Dashboard is a provisioned Grafana dashboard.
type Dashboard struct {
	File    string
	UID     string
	Title   string
	Queries []Query
}

// grafanaDashboard is the part of Grafana's dashboard model that holds queries.
type grafanaDashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
	Annotations struct {
		List []struct {
			Name string `json:"name"`
			Expr string `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// labelValues is Grafana's variable query label_values(SELECTOR, LABEL).
var labelValues = regexp.MustCompile(`^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$`)

// Dashboards reads every dashboard in grafana/dashboards with its queries; a variable's label_values query
// contributes its series selector.
func Dashboards() ([]Dashboard, error) {
	files, err := dashboards.ReadDir("grafana/dashboards")
	if err != nil {
		return nil, err
	}
	var out []Dashboard
	for _, f := range files {
		file := path.Join("grafana/dashboards", f.Name())
		data, err := dashboards.ReadFile(file)
		if err != nil {
			return nil, err
		}
		var g grafanaDashboard
		if err := json.Unmarshal(data, &g); err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		d := Dashboard{File: file, UID: g.UID, Title: g.Title}
		for _, p := range g.Panels {
			for _, t := range p.Targets {
				d.Queries = append(d.Queries, Query{Where: "panel " + p.Title, Expr: t.Expr})
			}
		}
		for _, a := range g.Annotations.List {
			if a.Expr != "" {
				d.Queries = append(d.Queries, Query{Where: "annotation " + a.Name, Expr: a.Expr})
			}
		}
		for _, v := range g.Templating.List {
			if v.Type != "query" {
				continue
			}
			q := v.Query
			if m, ok := q.(map[string]any); ok {
				q = m["query"]
			}
			text, _ := q.(string)
			match := labelValues.FindStringSubmatch(text)
			if match == nil {
				return nil, fmt.Errorf("%s: variable %s: want label_values(SELECTOR, LABEL), got %q", file, v.Name, text)
			}
			d.Queries = append(d.Queries, Query{Where: "variable " + v.Name, Expr: match[1]})
		}
		out = append(out, d)
	}
	return out, nil
}

var variable = regexp.MustCompile(`\$\{([a-zA-Z_][a-zA-Z0-9_]*)\}|\$([a-zA-Z_][a-zA-Z0-9_]*)`)

// Expand replaces Grafana's variables in expr as Grafana would before sending it: $__rate_interval and
// $__interval become the scrape-based intervals given, $__range the dashboard's range, others come from vars.
// A variable without a value is an error, so a typo cannot pass as a literal.
func Expand(expr string, vars map[string]string) (string, error) {
	var missing []string
	out := variable.ReplaceAllStringFunc(expr, func(m string) string {
		name := strings.Trim(m, "${}")
		if v, ok := vars[name]; ok {
			return v
		}
		missing = append(missing, name)
		return m
	})
	if len(missing) > 0 {
		sort.Strings(missing)
		return "", fmt.Errorf("no value for %s in %q", strings.Join(missing, ", "), expr)
	}
	return out, nil
}
