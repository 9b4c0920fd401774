// Package analysis turns a run's metrics into figures with PromQL, through any Prometheus HTTP API (the embedded
// one or an external one): each case run's outcome, CPU use and saturation, the measured service-out, each Pod's
// lifecycle from the run's timeline, and what the runs say together (the across-runs summary, the preStop sweep).
// Writing them down is package report's; attributing failed requests as they happen is package attribution's.
package analysis

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"

	"github.com/rollout-lab/rollout-lab/internal/wellknown"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Selector picks the series of one run of one case.
type Selector struct {
	Plan, Case, Run string
}

// FromLabels is the selector of an attack's labels.
func FromLabels(l load.Labels) Selector { return Selector{Plan: l.Plan, Case: l.Case, Run: l.Run} }

func (s Selector) matchers() string {
	quote := func(v string) string { return strconv.Quote(v) }
	return fmt.Sprintf("plan=%s,case=%s,run=%s", quote(s.Plan), quote(s.Case), quote(s.Run))
}

// Window is a span of a run over which counts and latencies are taken: (Start, End].
type Window struct {
	Start, End time.Time
}

// at renders a time for PromQL's @ modifier.
func at(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', -1, 64)
}

// lookback is how far back last_over_time looks from a window's edges: far enough to see every series of a run.
func lookback(w Window) string {
	return model.Duration(w.End.Sub(w.Start).Truncate(time.Second) + 10*time.Minute).String()
}

// increaseExact is how much a counter (or each histogram bucket) grew over the window, from the last scraped
// values at its edges. Unlike increase(), it does not extrapolate, so whole-run totals are exact; a series that
// did not exist yet at the start counts from zero.
func increaseExact(metric string, s Selector, w Window) string {
	series := fmt.Sprintf("%s{%s}", metric, s.matchers())
	end := fmt.Sprintf("last_over_time(%s[%s] @ %s)", series, lookback(w), at(w.End))
	start := fmt.Sprintf("last_over_time(%s[%s] @ %s)", series, lookback(w), at(w.Start))
	return fmt.Sprintf("(%s - (%s or %s * 0))", end, start, end)
}

// Queries are the PromQL of one run over one window.
type Queries struct {
	ByOutcome  string // requests by code and error class
	LatencySum string // seconds spent, all requests
	Quantile   func(q float64) string
}

// QueriesFor builds the window queries of a run.
func QueriesFor(s Selector, w Window) Queries {
	return Queries{
		ByOutcome:  fmt.Sprintf("sum by (code, error) %s", increaseExact(load.MetricRequests, s, w)),
		LatencySum: fmt.Sprintf("sum(%s)", increaseExact(load.MetricLatency+"_sum", s, w)),
		Quantile: func(q float64) string {
			return fmt.Sprintf("histogram_quantile(%g, sum by (le) %s)", q, increaseExact(load.MetricLatency+"_bucket", s, w))
		},
	}
}

// PhasesQuery returns the phase markers of a run.
func PhasesQuery(s Selector, end time.Time, span time.Duration) string {
	return fmt.Sprintf("last_over_time(%s{%s}[%s] @ %s)", load.MetricPhaseTimestamp, s.matchers(),
		model.Duration(span.Truncate(time.Second)+10*time.Minute), at(end))
}

// rateRange is irate's range for per-second series: a few scrapes, so one missed scrape leaves no gap.
func rateRange(scrape time.Duration) string { return model.Duration(3 * scrape).String() }

// SeriesQueries are the per-second range queries of a run, for charts.
type SeriesQueries struct {
	RateByClass string
	Quantile    func(q float64) string
}

// SeriesQueriesFor builds the chart queries of a run.
func SeriesQueriesFor(s Selector, scrape time.Duration) SeriesQueries {
	return SeriesQueries{
		RateByClass: fmt.Sprintf("sum by (error) (irate(%s{%s}[%s]))", load.MetricRequests, s.matchers(), rateRange(scrape)),
		Quantile: func(q float64) string {
			return fmt.Sprintf("histogram_quantile(%g, sum by (le) (irate(%s_bucket{%s}[%s])))", q, load.MetricLatency, s.matchers(), rateRange(scrape))
		},
	}
}

// CompactQuery removes the spaces PromQL does not need, for logs.
func CompactQuery(q string) string { return strings.Join(strings.Fields(q), " ") }

// Service-out latency metrics, in the order they are looked for: kube-proxy's own on a cluster (from the Pod change
// that triggered the EndpointSlice update to the node's rules being programmed), the lab's measurement.
const (
	KubeProxyProgrammingMetric = wellknown.MetricKubeProxyProgramming
	LabServiceOutMetric        = timeline.MetricServiceOut
	// KubeProxySyncMetric is how long each of kube-proxy's rule syncs took (reported beside service-out).
	KubeProxySyncMetric = "kubeproxy_sync_proxy_rules_duration_seconds"
)

// ServiceOutQueries are the quantile and count of a service-out histogram over a window, every node together.
type ServiceOutQueries struct {
	Count    string
	Quantile func(q float64) string
}

// ServiceOutQueriesFor builds them for a histogram metric.
func ServiceOutQueriesFor(metric string, w Window) ServiceOutQueries {
	grown := func(series string) string {
		end := fmt.Sprintf("last_over_time(%s[%s] @ %s)", series, lookback(w), at(w.End))
		start := fmt.Sprintf("last_over_time(%s[%s] @ %s)", series, lookback(w), at(w.Start))
		return fmt.Sprintf("(%s - (%s or %s * 0))", end, start, end)
	}
	return ServiceOutQueries{
		Count: fmt.Sprintf("sum(%s)", grown(metric+"_count")),
		Quantile: func(q float64) string {
			return fmt.Sprintf("histogram_quantile(%g, sum by (le) %s)", q, grown(metric+"_bucket"))
		},
	}
}
