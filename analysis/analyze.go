package analysis

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// Conditions are what a case set up: the rows above the outcomes in the article's tables.
type Conditions struct {
	// AppKnown is false when the runner did not deploy the app (a bare attack): the app rows are then unknown.
	AppKnown      bool          `json:"appKnown"`
	PreStopSleep  plan.Duration `json:"preStopSleep"`
	PreStopAction string        `json:"preStopAction"`
	Shutdown      string        `json:"shutdown"`
	DrainDelay    plan.Duration `json:"drainDelay,omitempty"`
	GracePeriod   plan.Duration `json:"terminationGracePeriod"`
	Replicas      int           `json:"replicas"`
	CPULoad       int           `json:"cpuLoad"` // 0 when the CPU knob is off
	MaxRPS        float64       `json:"maxRPS"`
	Planned       int64         `json:"plannedRequests"`
	// Connection is the load's connection model (per-user or pooled) and ThinkTime a per-user connection's pause.
	Connection string        `json:"connection,omitempty"`
	ThinkTime  plan.Duration `json:"thinkTime,omitempty"`
}

// ConditionsOf reads a case's conditions.
func ConditionsOf(c plan.Case) Conditions {
	cond := Conditions{AppKnown: true, PreStopSleep: c.App.PreStop.Sleep, PreStopAction: c.App.PreStop.Action, Shutdown: c.App.Shutdown,
		DrainDelay: c.App.DrainDelay, GracePeriod: c.App.TerminationGracePeriod, Replicas: c.App.Replicas, Planned: c.Requests}
	if c.App.Slow {
		cond.CPULoad = c.App.Load
	}
	cond.Connection, cond.ThinkTime = c.Load.Connection, c.Load.ThinkTime
	cond.MaxRPS = c.Load.MaxRate()
	if !c.App.PreStop.Hook() {
		cond.PreStopSleep, cond.PreStopAction = 0, plan.PreStopNone
	}
	return cond
}

// Outcome is what happened to the requests of a window.
type Outcome struct {
	Total     uint64            `json:"total"`
	OK        uint64            `json:"ok2xx"`
	Errors    uint64            `json:"errors"`
	ByClass   map[string]uint64 `json:"byClass"`
	ByCode    map[string]uint64 `json:"byCode"`
	ErrorRate float64           `json:"errorRate"`
	// Latencies in milliseconds over every request of the window, failures included (as vegeta reports them).
	MeanMs float64 `json:"meanMs"`
	P50Ms  float64 `json:"p50Ms"`
	P90Ms  float64 `json:"p90Ms"`
	P99Ms  float64 `json:"p99Ms"`
}

// Expectation is one condition of the plan checked on a run.
type Expectation struct {
	Condition string `json:"condition"` // e.g. "errors ≤ 0"
	Actual    string `json:"actual"`
	OK        bool   `json:"ok"`
}

// CheckExpectations checks a case's conditions against a run's whole-run outcome.
func CheckExpectations(e plan.Expect, o Outcome) []Expectation {
	var out []Expectation
	if e.MaxErrors != nil {
		out = append(out, Expectation{Condition: fmt.Sprintf("errors ≤ %d", *e.MaxErrors), Actual: strconv.FormatUint(o.Errors, 10),
			OK: *e.MaxErrors >= 0 && o.Errors <= uint64(*e.MaxErrors)})
	}
	if e.MaxErrorRate != nil {
		out = append(out, Expectation{Condition: fmt.Sprintf("error rate ≤ %g%%", *e.MaxErrorRate*100), Actual: strconv.FormatFloat(o.ErrorRate*100, 'f', 2, 64) + "%",
			OK: o.ErrorRate <= *e.MaxErrorRate})
	}
	return out
}

// Failed says whether any expectation of any run failed.
func (r Report) Failed() bool {
	for _, run := range r.Runs {
		for _, e := range run.Expectations {
			if !e.OK {
				return true
			}
		}
	}
	return false
}

// Series are per-second values for charts, indexed by seconds since the load began.
type Series struct {
	Seconds     []float64         `json:"seconds"`
	RateByClass map[string]Points `json:"rateByClass"`
	P50Ms       Points            `json:"p50Ms"`
	P99Ms       Points            `json:"p99Ms"`
}

// Points are values of a series; NaN marks a step without a value (null in JSON).
type Points []float64

// MarshalJSON writes NaN as null, which JSON has and NaN is not.
func (p Points) MarshalJSON() ([]byte, error) {
	var b strings.Builder
	b.WriteByte('[')
	for i, v := range p {
		if i > 0 {
			b.WriteByte(',')
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			b.WriteString("null")
		} else {
			b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	b.WriteByte(']')
	return []byte(b.String()), nil
}

// UnmarshalJSON reads null as NaN.
func (p *Points) UnmarshalJSON(data []byte) error {
	var raw []*float64
	if err := json.Unmarshal(data, &raw); err != nil {
		return err
	}
	*p = make(Points, len(raw))
	for i, v := range raw {
		(*p)[i] = math.NaN()
		if v != nil {
			(*p)[i] = *v
		}
	}
	return nil
}

// CaseRun is the result of one run of one case.
type CaseRun struct {
	Case string `json:"case"`
	Run  string `json:"run"`
	// Interrupted is set when the load was stopped before its schedule ended.
	Interrupted bool       `json:"interrupted,omitempty"`
	Conditions  Conditions `json:"conditions"`
	// Phases are the run's markers (load_start, load_end, rollout_start, rollout_complete) as found in Prometheus.
	Phases  map[string]time.Time `json:"phases"`
	Load    Window               `json:"load"`
	Rollout *Window              `json:"rolloutWindow,omitempty"`
	Whole   Outcome              `json:"whole"`
	// WarmUp is the load before the rollout began, the app's own pace to compare the run with; nil without a rollout.
	WarmUp *Outcome `json:"warmUp,omitempty"`
	// Attribution counts the failed requests by why they failed (AttributionCauses); nil when not attributed.
	Attribution map[string]uint64 `json:"attribution,omitempty"`
	// Lateness is how far behind its schedule the attacker sent (from its summary); nil when unknown.
	Lateness *Lateness `json:"sendLateness,omitempty"`
	// CPU is how busy the machine, the nodes and the app's containers were during the load; nil when unknown.
	CPU *CPUUse `json:"cpu,omitempty"`
	// InFlight lists the Pods that got SIGTERM with the requests they had in flight then and at exit; nil when
	// not counted (a bare attack, a cluster seen from outside).
	InFlight []rundir.PodInFlight `json:"inFlight,omitempty"`
	// Expectations are the plan's conditions for the case, checked on this run.
	Expectations []Expectation `json:"expectations,omitempty"`
	During       *Outcome      `json:"duringRollout,omitempty"`
	Series       Series        `json:"series"`
	// Timeline is the run's Pod lifecycle and kept failures, from its results directory; nil when it kept none.
	Timeline *RunTimeline `json:"-"`
}

// Lateness is the attacker's lateness against its schedule.
type Lateness struct {
	P99Ms float64 `json:"p99Ms"`
	MaxMs float64 `json:"maxMs"`
}

// SaturatedLateness is the p99 lateness beyond which a run is flagged as saturated: the attacker shares the
// machine with the lab, so when its own sends fall this far behind, the CPU was starved and the figures describe an
// overloaded machine rather than the plan. 20 ms is one inter-arrival interval at 50 requests/s, the lowest hold
// rate of the seed's plans; a process that keeps up sends within a millisecond or two.
const SaturatedLateness = 20.0

// Options tune an analysis.
type Options struct {
	// ScrapeInterval is the step of the per-second series and the slack around the load's edges.
	ScrapeInterval time.Duration
	// Drain extends the rollout window past the rollout's completion, for old Pods still terminating.
	Drain time.Duration
	// Now is when the data was complete (after the final scrape); default: now.
	Now time.Time
	// Namespace holds the app's Pods, for their CPU throttling; empty: not measured.
	Namespace string
}

// Analyze queries Prometheus for one run of one case.
func Analyze(ctx context.Context, api promv1.API, s Selector, cond Conditions, opts Options) (CaseRun, error) {
	if opts.ScrapeInterval <= 0 {
		opts.ScrapeInterval = time.Second
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	run := CaseRun{Case: s.Case, Run: s.Run, Conditions: cond, Phases: map[string]time.Time{}}
	phases, err := QueryVector(ctx, api, PhasesQuery(s, opts.Now, 7*24*time.Hour), opts.Now)
	if err != nil {
		return run, err
	}
	for _, sample := range phases {
		v := float64(sample.Value)
		if v <= 0 {
			continue
		}
		// Several attackers (in-cluster workers) mark their own phases: the load spans the first start to the last end.
		t, name := time.Unix(0, int64(v*1e9)).UTC(), string(sample.Metric["phase"])
		if prev, ok := run.Phases[name]; ok && (name == load.PhaseLoadStart && prev.Before(t) || name != load.PhaseLoadStart && prev.After(t)) {
			continue
		}
		run.Phases[name] = t
	}
	start, ok := run.Phases[load.PhaseLoadStart]
	if !ok {
		return run, fmt.Errorf("no load of plan %q case %q run %q in Prometheus", s.Plan, s.Case, s.Run)
	}
	end, ok := run.Phases[load.PhaseLoadEnd]
	if !ok {
		end = opts.Now // an interrupted run: what was scraped so far
	}
	// From before the first sample to after the final scrape, so the counters' growth is all of the run.
	run.Load = Window{Start: start.Add(-opts.ScrapeInterval), End: maxTime(opts.Now, end)}
	if run.Whole, err = outcome(ctx, api, s, run.Load, opts.Now); err != nil {
		return run, err
	}
	if rolloutStart, ok := run.Phases[load.PhaseRolloutStart]; ok && rolloutStart.After(start) {
		warmUp, err := outcome(ctx, api, s, Window{Start: run.Load.Start, End: rolloutStart}, opts.Now)
		if err != nil {
			return run, err
		}
		run.WarmUp = &warmUp
	}
	if rolloutStart, ok := run.Phases[load.PhaseRolloutStart]; ok {
		rolloutEnd := end
		if complete, ok := run.Phases[load.PhaseRolloutComplete]; ok {
			rolloutEnd = minTime(complete.Add(opts.Drain), end)
		}
		if rolloutEnd.After(rolloutStart) {
			run.Rollout = &Window{Start: rolloutStart, End: rolloutEnd}
			during, err := outcome(ctx, api, s, *run.Rollout, opts.Now)
			if err != nil {
				return run, err
			}
			run.During = &during
		}
	}
	if opts.Namespace != "" {
		if run.CPU, err = cpuUse(ctx, api, opts.Namespace, Window{Start: start, End: end}); err != nil {
			return run, err
		}
	}
	run.Series, err = series(ctx, api, s, start, end, opts.ScrapeInterval)
	return run, err
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// QueryVector runs an instant query that must return a vector.
func QueryVector(ctx context.Context, api promv1.API, q string, ts time.Time) (model.Vector, error) {
	v, _, _, err := api.Query(ctx, q, ts)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", CompactQuery(q), err)
	}
	vec, ok := v.(model.Vector)
	if !ok {
		return nil, fmt.Errorf("query %s: want a vector, got %s", CompactQuery(q), v.Type())
	}
	return vec, nil
}

func queryScalar(ctx context.Context, api promv1.API, q string, ts time.Time) (float64, error) {
	vec, err := QueryVector(ctx, api, q, ts)
	if err != nil || len(vec) == 0 {
		return math.NaN(), err
	}
	return float64(vec[0].Value), nil
}

func outcome(ctx context.Context, api promv1.API, s Selector, w Window, now time.Time) (Outcome, error) {
	q := QueriesFor(s, w)
	o := Outcome{ByClass: map[string]uint64{}, ByCode: map[string]uint64{}}
	vec, err := QueryVector(ctx, api, q.ByOutcome, now)
	if err != nil {
		return o, err
	}
	for _, sample := range vec {
		n := uint64(math.Round(float64(sample.Value)))
		if n == 0 {
			continue
		}
		code, class := string(sample.Metric["code"]), string(sample.Metric["error"])
		o.Total += n
		o.ByCode[code] += n
		o.ByClass[class] += n
		if strings.HasPrefix(code, "2") && class == load.ClassNone {
			o.OK += n
		}
		if class != load.ClassNone {
			o.Errors += n
		}
	}
	if o.Total == 0 {
		return o, nil
	}
	o.ErrorRate = float64(o.Errors) / float64(o.Total)
	sum, err := queryScalar(ctx, api, q.LatencySum, now)
	if err != nil {
		return o, err
	}
	o.MeanMs = roundMs(sum / float64(o.Total))
	for _, p := range []struct {
		q   float64
		out *float64
	}{{0.5, &o.P50Ms}, {0.9, &o.P90Ms}, {0.99, &o.P99Ms}} {
		v, err := queryScalar(ctx, api, q.Quantile(p.q), now)
		if err != nil {
			return o, err
		}
		*p.out = roundMs(v)
	}
	return o, nil
}

// roundMs turns seconds into milliseconds with three decimals (microseconds), 0 for no value.
func roundMs(seconds float64) float64 {
	if math.IsNaN(seconds) || math.IsInf(seconds, 0) {
		return 0
	}
	return math.Round(seconds*1e6) / 1e3
}

func series(ctx context.Context, api promv1.API, s Selector, start, end time.Time, step time.Duration) (Series, error) {
	out := Series{RateByClass: map[string]Points{}}
	r := promv1.Range{Start: start.Truncate(step), End: end.Add(step), Step: step}
	for t := r.Start; !t.After(r.End); t = t.Add(step) {
		out.Seconds = append(out.Seconds, t.Sub(start).Seconds())
	}
	index := func(ts model.Time) int {
		return int(math.Round(float64(ts.Time().Sub(r.Start)) / float64(step)))
	}
	fill := func(values []model.SamplePair, ms bool) Points {
		column := make(Points, len(out.Seconds))
		for i := range column {
			column[i] = math.NaN()
		}
		for _, v := range values {
			if i := index(v.Timestamp); i >= 0 && i < len(column) {
				column[i] = float64(v.Value)
				if ms {
					column[i] = roundMs(float64(v.Value))
				}
			}
		}
		return column
	}
	q := SeriesQueriesFor(s, step)
	matrix, err := queryRange(ctx, api, q.RateByClass, r)
	if err != nil {
		return out, err
	}
	for _, stream := range matrix {
		out.RateByClass[string(stream.Metric["error"])] = fill(stream.Values, false)
	}
	for _, p := range []struct {
		q   float64
		out *Points
	}{{0.5, &out.P50Ms}, {0.99, &out.P99Ms}} {
		matrix, err := queryRange(ctx, api, q.Quantile(p.q), r)
		if err != nil {
			return out, err
		}
		*p.out = fill(nil, true)
		if len(matrix) == 1 {
			*p.out = fill(matrix[0].Values, true)
		}
	}
	return out, nil
}

func queryRange(ctx context.Context, api promv1.API, q string, r promv1.Range) (model.Matrix, error) {
	v, _, _, err := api.QueryRange(ctx, q, r)
	if err != nil {
		return nil, fmt.Errorf("query_range %s: %w", CompactQuery(q), err)
	}
	m, ok := v.(model.Matrix)
	if !ok {
		return nil, fmt.Errorf("query_range %s: want a matrix, got %s", CompactQuery(q), v.Type())
	}
	sort.Slice(m, func(i, j int) bool { return m[i].Metric.String() < m[j].Metric.String() })
	return m, nil
}
