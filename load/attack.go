package load

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"sort"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/rollout-lab/rollout-lab/plan"
)

// DialFunc opens connections for the attacker; a target may route them (the lab's Service dataplane does).
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Options configure one attack.
type Options struct {
	URL string
	// Method is GET (empty) or POST with Body.
	Method  string
	Body    []byte
	Pacer   *StagesPacer
	Timeout time.Duration
	// Connection is plan.ConnectionPerUser (a connection per request, held ThinkTime after the response, never
	// reused) or plan.ConnectionPooled (a keep-alive pool of up to Connections idle connections).
	Connection  string
	ThinkTime   time.Duration
	Connections int
	Workers     uint64
	MaxWorkers  uint64 // 0: no bound
	// Dial opens connections; nil dials directly.
	Dial   DialFunc
	Labels Labels
	// Observe, when set, sees every outcome as it completes (from one goroutine).
	Observe func(Outcome)
	// Progress, when set, is called about once per ProgressEvery with the running totals.
	Progress      func(Progress)
	ProgressEvery time.Duration
}

// OptionsFromPlan fills the options a plan's load section gives.
func OptionsFromPlan(url string, l plan.Load, labels Labels) (Options, error) {
	pacer, err := PacerFor(l)
	if err != nil {
		return Options{}, err
	}
	var body []byte
	if l.Body != "" {
		body = []byte(l.Body)
	}
	return Options{URL: url, Method: l.Method, Body: body, Pacer: pacer, Timeout: l.Timeout.D(), Connection: l.Connection, ThinkTime: l.ThinkTime.D(), Connections: l.Connections,
		Workers: uint64(l.Workers), MaxWorkers: uint64(l.MaxWorkers), Labels: labels}, nil
}

// Outcome is one completed request.
type Outcome struct {
	Seq     uint64
	Sent    time.Time
	Latency time.Duration
	Code    uint16
	Class   string
	// Endpoint is where the request's connection went (host:port), when known; Pod is that Pod's UID, Node the
	// node whose proxy routed it.
	Endpoint string
	Pod      string
	Node     string
}

// Progress is the running state of an attack.
type Progress struct {
	Elapsed   time.Duration
	Sent      uint64
	Completed uint64
	Planned   uint64
	Rate      float64 // target arrivals/s now
	OK        uint64
	Errors    map[string]uint64 // by class, non-zero only
	P99       time.Duration
}

// Summary is what an attack did, counted by the attacker itself.
type Summary struct {
	Labels    Labels            `json:"labels"`
	Planned   uint64            `json:"planned"`
	Sent      uint64            `json:"sent"`
	Completed uint64            `json:"completed"`
	ByClass   map[string]uint64 `json:"byClass"`
	ByCode    map[string]uint64 `json:"byCode"`
	Start     time.Time         `json:"start"`
	End       time.Time         `json:"end"`
	Mean      time.Duration     `json:"meanLatency"`
	P50       time.Duration     `json:"p50Latency"`
	P90       time.Duration     `json:"p90Latency"`
	P99       time.Duration     `json:"p99Latency"`
	Max       time.Duration     `json:"maxLatency"`
	// LatenessP99 and LatenessMax are how far behind schedule hits went out.
	LatenessP99 time.Duration `json:"latenessP99"`
	LatenessMax time.Duration `json:"latenessMax"`
	Stopped     bool          `json:"stopped"` // ended early by its context
}

// Errors is the number of requests that did not succeed.
func (s Summary) Errors() uint64 { return s.Completed - s.ByClass[ClassNone] }

// Attack sends the pacer's requests to opts.URL, records every outcome in m, and returns when all have completed
// or ctx is done (then in-flight requests are abandoned by the attacker and counted by their own failure). The
// client is attackClient's, each outcome outcomeRecorder's; what stays here is the attacker's one loop.
func Attack(ctx context.Context, opts Options, m *Metrics) (Summary, error) {
	if opts.Pacer == nil {
		return Summary{}, fmt.Errorf("attack %s: no pacer", opts.URL)
	}
	method := opts.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequest(method, opts.URL, nil)
	if err != nil {
		return Summary{}, fmt.Errorf("attack: %w", err)
	}
	client, closeIdle := attackClient(opts)
	defer closeIdle()
	attacker := newAttacker(client, opts)

	labels := opts.Labels.values()
	sent := m.Sent.WithLabelValues(labels...)
	inFlight := m.InFlight.WithLabelValues(labels...)
	targetRate := m.TargetRate.WithLabelValues(labels...)
	m.Planned.WithLabelValues(labels...).Set(float64(opts.Pacer.Total()))
	var sentCount atomic.Uint64
	target := vegeta.Target{Method: method, URL: req.URL.String(), Body: opts.Body}
	targeter := func(t *vegeta.Target) error {
		sentCount.Add(1)
		sent.Inc()
		inFlight.Inc()
		*t = target
		return nil
	}

	summary := Summary{Labels: opts.Labels, Planned: opts.Pacer.Total(), ByClass: map[string]uint64{}, ByCode: map[string]uint64{}}
	hist, lateHist := newLocalHistogram(), newLocalHistogram()
	lateness := m.Lateness.WithLabelValues(labels...)
	summary.Start = time.Now()
	m.MarkPhase(opts.Labels, PhaseLoadStart, summary.Start)
	results := attacker.Attack(targeter, opts.Pacer, 0, opts.Labels.Case)

	every := opts.ProgressEvery
	if every <= 0 {
		every = time.Second
	}
	ticker := time.NewTicker(min(every, 250*time.Millisecond))
	defer ticker.Stop()
	lastProgress := time.Now()
	done := ctx.Done()
	rec := &outcomeRecorder{m: m, opts: opts, summary: &summary, hist: hist, lateHist: lateHist, lateness: lateness,
		latencyByClass: map[string]interface{ Observe(float64) }{}, requestsByKey: map[[2]string]interface{ Inc() }{}}
	for {
		select {
		case <-done:
			summary.Stopped = true
			attacker.Stop()
			done = nil // keep draining results until the attacker closes the channel
		case <-ticker.C:
			elapsed := time.Since(summary.Start)
			targetRate.Set(opts.Pacer.Rate(elapsed))
			if opts.Progress != nil && time.Since(lastProgress) >= every {
				lastProgress = time.Now()
				opts.Progress(progressOf(&summary, hist, sentCount.Load(), elapsed, opts.Pacer.Rate(elapsed)))
			}
		case r, ok := <-results:
			if !ok {
				summary.Sent = sentCount.Load()
				targetRate.Set(0)
				rec.finish()
				m.MarkPhase(opts.Labels, PhaseLoadEnd, summary.End)
				return summary, nil
			}
			inFlight.Dec()
			rec.observe(r)
		}
	}
}

// newAttacker is vegeta's attacker on the load's client, following no redirect and keeping no body.
func newAttacker(client *http.Client, opts Options) *vegeta.Attacker {
	maxWorkers := opts.MaxWorkers
	if maxWorkers == 0 {
		maxWorkers = vegeta.DefaultMaxWorkers
	}
	return vegeta.NewAttacker(vegeta.Client(client), vegeta.Workers(max(opts.Workers, 1)), vegeta.MaxWorkers(maxWorkers),
		vegeta.Redirects(vegeta.NoFollow),
		// Keep no response body in memory: vegeta still reads each one to its end (so a keep-alive connection is
		// reused), within the request's timeout.
		vegeta.MaxBody(0))
}

// finish closes the summary when the last outcome is in: the end, the mean, the quantiles and the lateness.
func (rec *outcomeRecorder) finish() {
	s := rec.summary
	s.End = time.Now()
	if s.Completed > 0 {
		s.Mean = rec.latencySum / time.Duration(s.Completed)
	}
	s.P50, s.P90, s.P99 = rec.hist.quantile(0.5), rec.hist.quantile(0.9), rec.hist.quantile(0.99)
	s.Max = rec.hist.max
	s.LatenessP99, s.LatenessMax = rec.lateHist.quantile(0.99), rec.lateHist.max
}

func progressOf(s *Summary, h *localHistogram, sent uint64, elapsed time.Duration, rate float64) Progress {
	p := Progress{Elapsed: elapsed, Sent: sent, Completed: s.Completed, Planned: s.Planned, Rate: rate,
		OK: s.ByClass[ClassNone], Errors: map[string]uint64{}, P99: h.quantile(0.99)}
	for class, n := range s.ByClass {
		if class != ClassNone && n > 0 {
			p.Errors[class] = n
		}
	}
	return p
}

// localHistogram gives the attacker its own quantiles for progress and summary, on the exported buckets.
type localHistogram struct {
	counts []uint64 // counts[i]: latencies ≤ LatencyBuckets[i]; the last slot is +Inf
	total  uint64
	max    time.Duration
}

func newLocalHistogram() *localHistogram {
	return &localHistogram{counts: make([]uint64, len(LatencyBuckets)+1)}
}

func (h *localHistogram) observe(d time.Duration) {
	i := sort.SearchFloat64s(LatencyBuckets, d.Seconds())
	h.counts[i]++
	h.total++
	h.max = max(h.max, d)
}

// quantile interpolates within the bucket, as PromQL's histogram_quantile does.
func (h *localHistogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := q * float64(h.total)
	var cumulative uint64
	for i, c := range h.counts {
		if float64(cumulative+c) >= rank && c > 0 {
			if i == len(LatencyBuckets) {
				return h.max
			}
			lower := 0.0
			if i > 0 {
				lower = LatencyBuckets[i-1]
			}
			upper := LatencyBuckets[i]
			v := lower + (upper-lower)*(rank-float64(cumulative))/float64(c)
			return time.Duration(math.Min(v, h.max.Seconds()) * float64(time.Second))
		}
		cumulative += c
	}
	return h.max
}

// attackClient is the HTTP client of an attack: the plan's connection model over opts.Dial (the target's dialer),
// never a proxy, every error classified with the request's timeout.
func attackClient(opts Options) (*http.Client, func()) {
	dial := opts.Dial
	if dial == nil {
		dial = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	perUser := opts.Connection != plan.ConnectionPooled
	if perUser && opts.ThinkTime > 0 {
		dial = holdOpen(dial, opts.ThinkTime)
	}
	idle := max(opts.Connections, 1)
	if perUser {
		// Per user: a new connection for every request, closed (after the think time) once its response is read —
		// never reused, so Go's client never retries (it retries only on reused connections), as Gatling without
		// shareConnections. The request still asks for keep-alive, as Gatling's does: the server keeps the
		// connection open through the user's pause and sees the client close it.
		idle = -1
	}
	transport := &http.Transport{
		DialContext:         dial,
		MaxIdleConnsPerHost: idle,
		Proxy:               nil, // load must reach the target itself, never a proxy from the environment
	}
	return &http.Client{Transport: classifyingTransport{next: transport, timeout: opts.Timeout}}, transport.CloseIdleConnections
}

// outcomeRecorder counts each result of an attack into the metrics, the summary and the local histograms, and hands
// it to opts.Observe.
type outcomeRecorder struct {
	m              *Metrics
	opts           Options
	summary        *Summary
	hist, lateHist *localHistogram
	lateness       prometheus.Observer
	latencyByClass map[string]interface{ Observe(float64) }
	requestsByKey  map[[2]string]interface{ Inc() }
	latencySum     time.Duration
}

func (o *outcomeRecorder) observe(r *vegeta.Result) {
	class := Classify(r.Code, r.Error)
	code := CodeLabel(r.Code)
	key := [2]string{code, class}
	counter, ok := o.requestsByKey[key]
	if !ok {
		counter = o.m.Requests.WithLabelValues(o.opts.Labels.values(code, class)...)
		o.requestsByKey[key] = counter
	}
	counter.Inc()
	observer, ok := o.latencyByClass[class]
	if !ok {
		observer = o.m.Latency.WithLabelValues(o.opts.Labels.values(class)...)
		o.latencyByClass[class] = observer
	}
	observer.Observe(r.Latency.Seconds())
	o.summary.Completed++
	o.summary.ByClass[class]++
	o.summary.ByCode[code]++
	o.latencySum += r.Latency
	o.hist.observe(r.Latency)
	late := max(r.Timestamp.Sub(o.summary.Start.Add(o.opts.Pacer.Due(r.Seq))), 0)
	o.lateHist.observe(late)
	o.lateness.Observe(late.Seconds())
	if o.opts.Observe != nil {
		route := RouteOf(r.Error, r.Headers)
		o.opts.Observe(Outcome{Seq: r.Seq, Sent: r.Timestamp, Latency: r.Latency, Code: r.Code, Class: class, Endpoint: route.Endpoint, Pod: route.Pod, Node: route.Node})
	}
}
