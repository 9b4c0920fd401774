package app

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestSayRendersBalloonAndCow(t *testing.T) {
	want := ` _______
< hello >
 -------
` + cowBody
	if got := Say("hello"); got != want {
		t.Errorf("Say(hello) =\n%s\nwant\n%s", got, want)
	}
}

func TestThinkWrapsLongMessages(t *testing.T) {
	got := Think(strings.Repeat("moo ", 15))
	lines := strings.Split(got, "\n")
	if lines[1] != "( moo moo moo moo moo moo moo moo moo moo )" || lines[2] != "( moo moo moo moo moo                     )" {
		t.Errorf("wrapped balloon:\n%s", got)
	}
	if !strings.Contains(got, "        o   ^__^") {
		t.Errorf("thinking cow uses o bubbles:\n%s", got)
	}
}

func TestBurnCPUScalesWithTheSquareOfLoad(t *testing.T) {
	small, large := timeBurn(100), timeBurn(1000)
	// 100× the iterations; allow generous noise but catch a linear (10×) or missing loop.
	if ratio := float64(large) / float64(small); ratio < 30 {
		t.Errorf("load 1000 took %v, load 100 took %v: ratio %.1f, want about 100", large, small, ratio)
	}
}

func timeBurn(load int) time.Duration {
	best := time.Hour
	for range 5 {
		start := time.Now()
		newCPUKnob(RandLocked).burn(load)
		best = min(best, time.Since(start))
	}
	return best
}

func TestServerMetricsRecordRequestsAndShutdownTimeline(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := NewServer(Config{Shutdown: ShutdownGraceful}, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	terminate := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln, terminate) }()

	base := "http://" + ln.Addr().String()
	for _, path := range []string{"/say?m=a", "/say?m=b", "/think", "/health", "/nope"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	lastRequest := time.Now()
	if got := testutil.ToFloat64(s.metrics.Requests.WithLabelValues("say", "200")); got != 2 {
		t.Errorf("say 200 = %v, want 2", got)
	}
	if got := testutil.ToFloat64(s.metrics.Requests.WithLabelValues("think", "200")); got != 1 {
		t.Errorf("think 200 = %v, want 1", got)
	}
	if got := testutil.CollectAndCount(s.metrics.Duration); got != 3 {
		t.Errorf("duration series = %d, want 3 (say, think, health)", got)
	}
	if got := testutil.ToFloat64(s.metrics.SigtermReceived); got != 0 {
		t.Errorf("sigterm timestamp %v before SIGTERM", got)
	}
	if got := testutil.ToFloat64(s.metrics.Phase.WithLabelValues(PhaseServing)); got != 1 {
		t.Errorf("serving phase = %v, want 1", got)
	}

	close(terminate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	sigterm, closed := testutil.ToFloat64(s.metrics.SigtermReceived), testutil.ToFloat64(s.metrics.ListenerClosed)
	last := testutil.ToFloat64(s.metrics.LastRequestFinished)
	if sigterm < unixSeconds(lastRequest) || closed < sigterm {
		t.Errorf("timeline out of order: last request %v, sigterm %v, listener closed %v", last, sigterm, closed)
	}
	if last > unixSeconds(lastRequest) || last < unixSeconds(lastRequest)-5 {
		t.Errorf("last request finished %v, want just before %v", last, unixSeconds(lastRequest))
	}
	if got := testutil.ToFloat64(s.metrics.Phase.WithLabelValues(PhaseClosing)); got != 1 {
		t.Errorf("closing phase = %v, want 1", got)
	}
	if _, err := http.Get(base + "/health"); err == nil {
		t.Error("server still answers after shutdown")
	}
}

func TestMetricNamesLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestParseShutdownMode(t *testing.T) {
	for _, name := range []string{"immediate", "graceful", "drain"} {
		if m, err := ParseShutdownMode(name); err != nil || string(m) != name {
			t.Errorf("ParseShutdownMode(%q) = %q, %v", name, m, err)
		}
	}
	if _, err := ParseShutdownMode("later"); err == nil || !strings.Contains(err.Error(), "later") {
		t.Errorf("want an error naming the bad mode, got %v", err)
	}
}

func TestShutdownFlagsMapOntoModes(t *testing.T) {
	cases := []struct {
		args    []string
		want    ShutdownMode
		wantErr string
	}{
		{nil, ShutdownGraceful, ""},
		{[]string{"--shutdown-gracefully=false"}, ShutdownImmediate, ""},
		{[]string{"-g=false"}, ShutdownImmediate, ""},
		{[]string{"--shutdown-gracefully=true"}, ShutdownGraceful, ""},
		{[]string{"--shutdown=drain"}, ShutdownDrain, ""},
		{[]string{"--shutdown=drain", "-g=true"}, ShutdownDrain, ""},
		{[]string{"--shutdown=drain", "-g=false"}, "", "contradicts"},
		{[]string{"--shutdown=graceful", "-g=false"}, "", "contradicts"},
		{[]string{"--shutdown=soon"}, "", "unknown shutdown mode"},
	}
	for _, c := range cases {
		cmd := newServeCommand(io.Discard, nil)
		if err := cmd.ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		shutdown, _ := cmd.Flags().GetString("shutdown")
		graceful, _ := cmd.Flags().GetBool("shutdown-gracefully")
		got, err := resolveShutdownMode(cmd, shutdown, graceful)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%v: err %v, want %q", c.args, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%v: %q, %v; want %q", c.args, got, err, c.want)
		}
	}
}

func TestPostedMessageAndDelay(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := NewServer(Config{Shutdown: ShutdownGraceful, Delay: 150 * time.Millisecond}, slog.New(slog.DiscardHandler), reg, reg)
	for _, tc := range []struct {
		method, body string
		code         int
		balloon      string
	}{
		{"POST", "posted", http.StatusOK, "< posted >"},
		{"POST", "", http.StatusOK, "< Moo! >"},
		{"GET", "", http.StatusOK, "< Moo! >"},
		{"POST", strings.Repeat("m", maxMessageBytes+1), http.StatusRequestEntityTooLarge, ""},
	} {
		rec := httptest.NewRecorder()
		start := time.Now()
		s.http.Handler.ServeHTTP(rec, httptest.NewRequest(tc.method, "/say", strings.NewReader(tc.body)))
		if took := time.Since(start); took < 150*time.Millisecond {
			t.Errorf("%s %d bytes: answered in %v, before the 150 ms delay", tc.method, len(tc.body), took)
		}
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.balloon) {
			t.Errorf("%s %d bytes: %d\n%s", tc.method, len(tc.body), rec.Code, rec.Body.String())
		}
	}
	if got := testutil.ToFloat64(s.metrics.Requests.WithLabelValues("say", "200")); got != 3 {
		t.Errorf("say 200 counted %v, want 3", got)
	}
}
