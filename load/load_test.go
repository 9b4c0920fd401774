package load

import (
	"bufio"
	"context"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"

	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/rollout-lab/rollout-lab/plan"
)

func referenceLoad(peak float64) plan.Load {
	minute := plan.Duration(time.Minute)
	return plan.Load{StartRate: 1, Stages: []plan.Stage{{Duration: minute, Target: peak}, {Duration: minute, Target: peak}, {Duration: minute, Target: 1}}}
}

func TestStagesPacerSendsThePlansExactCount(t *testing.T) {
	for _, c := range []struct {
		load plan.Load
		want uint64
	}{{referenceLoad(200), 24060}, {referenceLoad(100), 12060}, {plan.Load{Rate: 40, Duration: plan.Duration(30 * time.Second)}, 1200}} {
		p, err := PacerFor(c.load)
		if err != nil {
			t.Fatal(err)
		}
		if p.Total() != c.want || uint64(c.load.Requests()) != c.want {
			t.Errorf("%v: pacer %d, plan %d, want %d", p, p.Total(), c.load.Requests(), c.want)
		}
		// Simulate the attacker: count hits whose due time falls inside the schedule, and stop where the pacer says.
		var hits uint64
		prev := time.Duration(-1)
		for {
			wait, stop := p.Pace(p.Due(hits), hits)
			if stop {
				break
			}
			due := p.Due(hits)
			if wait != 0 || due < prev || due > p.Duration() {
				t.Fatalf("hit %d due %v after %v (wait %v, schedule %v)", hits, due, prev, wait, p.Duration())
			}
			prev = due
			hits++
		}
		if hits != c.want {
			t.Errorf("%v: simulated %d hits, want %d", p, hits, c.want)
		}
	}
}

func TestStagesPacerFollowsTheRamp(t *testing.T) {
	p, _ := PacerFor(referenceLoad(200))
	for _, c := range []struct {
		at   time.Duration
		rate float64
	}{{0, 1}, {30 * time.Second, 100.5}, {90 * time.Second, 200}, {150 * time.Second, 100.5}, {181 * time.Second, 0}} {
		if got := p.Rate(c.at); math.Abs(got-c.rate) > 1e-9 {
			t.Errorf("rate at %v = %v, want %v", c.at, got, c.rate)
		}
	}
	// The first 6030 arrivals take the ramp's 60 s; hit n is due where the integral of the rate reaches n.
	for n, want := range map[uint64]time.Duration{0: 0, 6030: time.Minute, 18030: 2 * time.Minute} {
		if got := p.Due(n); (got - want).Abs() > time.Millisecond {
			t.Errorf("hit %d due at %v, want %v", n, got, want)
		}
	}
	half := p.Due(3015) // integral t + 199/120 t² = 3015 → t ≈ 42.33 s
	if want := 42.33 * float64(time.Second); math.Abs(float64(half)-want) > 0.01*float64(time.Second) {
		t.Errorf("hit 3015 due at %v, want about 42.33 s", half)
	}
}

func TestNewStagesPacerRejectsBadSegments(t *testing.T) {
	for _, s := range []Segment{{Duration: 0, From: 1, To: 1}, {Duration: time.Second, From: -1, To: 1}, {Duration: time.Second, From: math.NaN()}} {
		if _, err := NewStagesPacer([]Segment{s}); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}

func constantPacer(t *testing.T, rate float64, d time.Duration) *StagesPacer {
	t.Helper()
	p, err := NewStagesPacer([]Segment{{Duration: d, From: rate, To: rate}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAttackCountsEveryOutcomeExactly(t *testing.T) {
	var served int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served++
		if r.URL.Query().Get("m") != "hi" {
			w.WriteHeader(http.StatusBadRequest)
		}
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	labels := Labels{Plan: "p", Case: "c", Run: "1"}
	pacer, _ := NewStagesPacer([]Segment{{Duration: time.Second, From: 0, To: 200}, {Duration: 500 * time.Millisecond, From: 200, To: 200}})
	var observed int
	summary, err := Attack(context.Background(), Options{URL: srv.URL + "/say?m=hi", Pacer: pacer, Timeout: 5 * time.Second,
		Connection: plan.ConnectionPooled, Connections: 100, Workers: 10, Labels: labels, Observe: func(Outcome) { observed++ }}, m)
	if err != nil {
		t.Fatal(err)
	}
	const want = 200 // 100 over the ramp, 100 over the hold
	if pacer.Total() != want || summary.Sent != want || summary.Completed != want || summary.ByClass[ClassNone] != want || served != want || observed != want {
		t.Fatalf("planned %d sent %d completed %d ok %d served %d observed %d, want %d", pacer.Total(), summary.Sent, summary.Completed, summary.ByClass[ClassNone], served, observed, want)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("p", "c", "1", "200", "none")); got != want {
		t.Errorf("requests_total{code=200,error=none} = %v", got)
	}
	if got := testutil.ToFloat64(m.Sent.WithLabelValues("p", "c", "1")); got != want {
		t.Errorf("sent = %v", got)
	}
	if got := testutil.ToFloat64(m.Planned.WithLabelValues("p", "c", "1")); got != want {
		t.Errorf("planned = %v", got)
	}
	if got := testutil.ToFloat64(m.InFlight.WithLabelValues("p", "c", "1")); got != 0 {
		t.Errorf("in flight after the end = %v", got)
	}
	start := testutil.ToFloat64(m.Phase.WithLabelValues("p", "c", "1", PhaseLoadStart))
	end := testutil.ToFloat64(m.Phase.WithLabelValues("p", "c", "1", PhaseLoadEnd))
	if d := end - start; d < 1.4 || d > 3 {
		t.Errorf("load phase markers %v → %v: %v s, want about 1.5", start, end, d)
	}
	if elapsed := summary.End.Sub(summary.Start); elapsed < 1400*time.Millisecond {
		t.Errorf("attack took %v, the schedule lasts 1.5 s", elapsed)
	}
	if summary.P99 <= 0 || summary.P99 > time.Second || summary.Mean <= 0 {
		t.Errorf("latencies p99 %v mean %v", summary.P99, summary.Mean)
	}
	if n := testutil.CollectAndCount(m.Latency); n != 1 {
		t.Errorf("latency series %d, want 1 (error=none)", n)
	}
}

func TestAttackStopsWhenCancelled(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	m := NewMetrics(prometheus.NewRegistry())
	summary, err := Attack(ctx, Options{URL: srv.URL, Pacer: constantPacer(t, 100, 10*time.Second), Timeout: time.Second, Labels: Labels{Plan: "p", Case: "c", Run: "1"}}, m)
	if err != nil {
		t.Fatal(err)
	}
	if !summary.Stopped || summary.Sent > 60 || summary.Sent < 10 || summary.Completed != summary.Sent {
		t.Errorf("stopped %v sent %d completed %d", summary.Stopped, summary.Sent, summary.Completed)
	}
}

// rawServer accepts connections on loopback and hands each to handle.
func rawServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(conn)
		}
	}()
	return "http://" + ln.Addr().String() + "/"
}

func readRequest(conn net.Conn) {
	_, _ = http.ReadRequest(bufio.NewReader(conn))
}

func TestOutcomesAreClassifiedFromRealSockets(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedURL := "http://" + closed.Addr().String() + "/"
	closed.Close()
	stalls := make(chan struct{})
	defer close(stalls)
	cases := map[string]string{
		ClassRefused: closedURL,
		ClassReset: rawServer(t, func(c net.Conn) {
			readRequest(c)
			_ = c.(*net.TCPConn).SetLinger(0) // close with RST
			c.Close()
		}),
		ClassEOF: rawServer(t, func(c net.Conn) {
			readRequest(c)
			c.Close()
		}),
		ClassTimeout: rawServer(t, func(c net.Conn) {
			readRequest(c)
			<-stalls
			c.Close()
		}),
		ClassHTTP5xx: rawServer(t, func(c net.Conn) {
			readRequest(c)
			_, _ = c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			c.Close()
		}),
		ClassOther: rawServer(t, func(c net.Conn) {
			readRequest(c)
			_, _ = c.Write([]byte("SSH-2.0-not-http\r\n\r\n"))
			c.Close()
		}),
	}
	// Closing in the middle of a body is an EOF too, seen while reading the response rather than its head.
	midBody := rawServer(t, func(c net.Conn) {
		readRequest(c)
		_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial"))
		c.Close()
	})
	for class, url := range cases {
		checkClass(t, url, class, "0")
	}
	checkClass(t, midBody, ClassEOF, "0")
	checkClass(t, cases[ClassHTTP5xx], ClassHTTP5xx, "503")
}

func checkClass(t *testing.T, url, class, code string) {
	t.Helper()
	if class == ClassHTTP5xx {
		code = "503"
	}
	m := NewMetrics(prometheus.NewRegistry())
	labels := Labels{Plan: "p", Case: class, Run: "1"}
	summary, err := Attack(context.Background(), Options{URL: url, Pacer: constantPacer(t, 20, 250*time.Millisecond), Timeout: 300 * time.Millisecond, Labels: labels}, m)
	if err != nil {
		t.Fatal(err)
	}
	if summary.Completed != 5 || summary.ByClass[class] != 5 {
		t.Errorf("%s (%s): completed %d, by class %v", class, url, summary.Completed, summary.ByClass)
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("p", class, "1", code, class)); got != 5 {
		t.Errorf("%s: requests_total{code=%s,error=%s} = %v", class, code, class, got)
	}
}

func TestClassifyFallsBackToTheStatus(t *testing.T) {
	for _, c := range []struct {
		code  uint16
		err   string
		class string
	}{
		{200, "", ClassNone}, {302, "", ClassNone}, {404, "404 Not Found", ClassHTTP4xx}, {500, "500 Internal Server Error", ClassHTTP5xx},
		{0, `Get "http://x": [refused] dial tcp: connection refused`, ClassRefused}, {0, "something vegeta said", ClassOther},
		{0, `Get "http://x": [reset@198.18.0.7:8080] read: connection reset by peer`, ClassReset},
		{0, `Get "http://x": [timeout] context deadline exceeded (Client.Timeout exceeded while awaiting headers)`, ClassTimeout},
	} {
		if got := Classify(c.code, c.err); got != c.class {
			t.Errorf("Classify(%d, %q) = %s, want %s", c.code, c.err, got, c.class)
		}
	}
}

func TestFailedOutcomesNameTheirEndpoint(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := closed.Addr().String()
	closed.Close()
	reset := rawServer(t, func(c net.Conn) {
		readRequest(c)
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	for url, class := range map[string]string{"http://" + addr + "/": ClassRefused, reset: ClassReset} {
		var seen []Outcome
		_, err := Attack(context.Background(), Options{URL: url, Pacer: constantPacer(t, 10, 200*time.Millisecond), Timeout: time.Second,
			Labels: Labels{Plan: "p", Case: "c", Run: "1"}, Observe: func(o Outcome) { seen = append(seen, o) }}, NewMetrics(prometheus.NewRegistry()))
		if err != nil {
			t.Fatal(err)
		}
		want := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/")
		if len(seen) != 2 || seen[0].Class != class || seen[0].Endpoint != want {
			t.Errorf("%s: outcomes %+v, want class %s at %s", url, seen, class, want)
		}
	}
}

func TestMetricNamesLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	l := Labels{Plan: "p", Case: "c", Run: "1"}
	m.Requests.WithLabelValues(l.values("200", "none")...).Inc()
	m.Latency.WithLabelValues(l.values("none")...).Observe(0.1)
	m.MarkPhase(l, PhaseRolloutStart, time.Unix(100, 0))
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	if got := testutil.ToFloat64(m.Phase.WithLabelValues(l.values(PhaseRolloutStart)...)); got != 100 {
		t.Errorf("rollout_start = %v", got)
	}
}

func TestAttackPostsTheBody(t *testing.T) {
	var posted atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || string(body) != "moo" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		posted.Add(1)
	}))
	defer srv.Close()
	pacer, _ := NewStagesPacer([]Segment{{Duration: 500 * time.Millisecond, From: 40, To: 40}})
	summary, err := Attack(context.Background(), Options{URL: srv.URL + "/say", Method: http.MethodPost, Body: []byte("moo"),
		Pacer: pacer, Timeout: 5 * time.Second, Connection: plan.ConnectionPooled, Connections: 10, Workers: 2}, NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	if summary.ByClass[ClassNone] != 20 || posted.Load() != 20 {
		t.Errorf("ok %d, posted %d, want 20 (%v)", summary.ByClass[ClassNone], posted.Load(), summary.ByClass)
	}
}

// A connection routed to a Pod that is already gone never opens: the request times out, and its outcome still
// names the Pod the router chose (by UID, since addresses are reused), reported through the dial's context.
func TestTimedOutDialsNameTheRoutedPod(t *testing.T) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ReportRoute(ctx, func() Route { return Route{Endpoint: "198.18.0.7:8080", Pod: "uid-gone"} })
		<-ctx.Done() // no answer from an address whose Pod is gone
		return nil, ctx.Err()
	}
	var seen []Outcome
	_, err := Attack(context.Background(), Options{URL: "http://cowweb.ns:80/say", Pacer: constantPacer(t, 10, 200*time.Millisecond),
		Timeout: 300 * time.Millisecond, Dial: dial, Observe: func(o Outcome) { seen = append(seen, o) }}, NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Fatalf("outcomes %+v", seen)
	}
	for _, o := range seen {
		if o.Class != ClassTimeout || o.Endpoint != "198.18.0.7:8080" || o.Pod != "uid-gone" {
			t.Errorf("outcome %+v, want a timeout at 198.18.0.7:8080 (uid-gone)", o)
		}
	}
}

// Per user: every request its own connection, never reused, held open for the think time after the response.
func TestPerUserConnectionsAreNeverReused(t *testing.T) {
	var opened, open, maxOpen atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
			if n := open.Add(1); n > maxOpen.Load() {
				maxOpen.Store(n)
			}
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}
	srv.Start()
	defer srv.Close()
	summary, err := Attack(context.Background(), Options{URL: srv.URL + "/say", Pacer: constantPacer(t, 50, time.Second),
		Timeout: 5 * time.Second, Connection: plan.ConnectionPerUser, ThinkTime: 400 * time.Millisecond}, NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	if summary.ByClass[ClassNone] != 50 || opened.Load() != 50 {
		t.Errorf("ok %d over %d connections, want 50 over 50", summary.ByClass[ClassNone], opened.Load())
	}
	// 50/s with 400 ms of think time: about 20 connections open at once, not one per request in flight only.
	if maxOpen.Load() < 12 {
		t.Errorf("at most %d connections open at once: the think time does not hold them", maxOpen.Load())
	}
}

// Every hit's lateness against its schedule is observed; an attacker with an idle machine keeps its schedule.
func TestLatenessAgainstTheScheduleIsMeasured(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	labels := Labels{Plan: "p", Case: "late", Run: "1"}
	summary, err := Attack(context.Background(), Options{URL: srv.URL, Pacer: constantPacer(t, 50, time.Second), Timeout: time.Second,
		Labels: labels}, m)
	if err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(m.Lateness, "rolloutlab_send_lateness_seconds"); n != 1 {
		t.Fatalf("%d lateness series", n)
	}
	var metric dto.Metric
	if err := m.Lateness.WithLabelValues(labels.values()...).(prometheus.Histogram).Write(&metric); err != nil {
		t.Fatal(err)
	}
	if got := metric.GetHistogram().GetSampleCount(); got != 50 {
		t.Errorf("lateness observed for %d hits, want 50", got)
	}
	if summary.LatenessMax > 200*time.Millisecond || summary.LatenessP99 > summary.LatenessMax {
		t.Errorf("lateness p99 %v max %v on an idle machine", summary.LatenessP99, summary.LatenessMax)
	}
}
