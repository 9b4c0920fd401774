package analysis

import (
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/prometheus/prometheus/promql/promqltest"
)

// The package's own queries, rendered into promqltest scripts, against series of known values.
func TestQueriesWithPromQLTestScripts(t *testing.T) {
	tmpl := template.Must(template.ParseFiles("testdata/window.test.tmpl"))
	s := Selector{Plan: "p", Case: "c", Run: "1"}
	epoch := time.Unix(0, 0)
	var script strings.Builder
	if err := tmpl.Execute(&script, map[string]any{
		"Whole":      QueriesFor(s, Window{Start: epoch, End: epoch.Add(10 * time.Second)}),
		"Rollout":    QueriesFor(s, Window{Start: epoch.Add(3 * time.Second), End: epoch.Add(6 * time.Second)}),
		"Phases":     PhasesQuery(s, epoch.Add(10*time.Second), 10*time.Second),
		"Series":     SeriesQueriesFor(s, time.Second),
		"ServiceOut": ServiceOutQueriesFor(KubeProxyProgrammingMetric, Window{Start: epoch, End: epoch.Add(9 * time.Second)}),
		"CPU":        CPUQueriesFor("app", Window{Start: epoch, End: epoch.Add(10 * time.Second)}),
	}); err != nil {
		t.Fatal(err)
	}
	promqltest.RunTest(t, script.String(), promqltest.NewTestEngine(t, false, 5*time.Minute, promqltest.DefaultMaxSamplesPerQuery))
}
