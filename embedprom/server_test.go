package embedprom

import (
	"path/filepath"

	"context"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/model"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
)

// exporter serves a registry's metrics on loopback, as the runner serves its attacker's.
func exporter(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

func instant(t *testing.T, api promv1.API, query string, at time.Time) float64 {
	t.Helper()
	v, _, _, err := api.Query(context.Background(), query, at)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	vec, ok := v.(model.Vector)
	if !ok || len(vec) != 1 {
		t.Fatalf("%s: want one sample, got %v", query, v)
	}
	return float64(vec[0].Value)
}

// The totals PromQL returns after the final scrape equal the attacker's own counts.
func TestScrapedTotalsEqualTheAttackersCounts(t *testing.T) {
	dir := t.TempDir()
	prom, err := Start(Options{Dir: dir, ScrapeInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Close()
	reg := prometheus.NewRegistry()
	metrics := load.NewMetrics(reg)
	if err := prom.SetTargets("attacker", []Target{{Address: exporter(t, reg)}}); err != nil {
		t.Fatal(err)
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("fail") != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer app.Close()
	pacer, _ := load.NewStagesPacer([]load.Segment{{Duration: 1500 * time.Millisecond, From: 50, To: 150}})
	labels := load.Labels{Plan: "p", Case: "ok", Run: "1"}
	summary, err := load.Attack(context.Background(), load.Options{URL: app.URL, Pacer: pacer, Timeout: time.Second, Connection: plan.ConnectionPooled, Connections: 10, Workers: 5, Labels: labels}, metrics)
	if err != nil {
		t.Fatal(err)
	}
	failing, _ := load.NewStagesPacer([]load.Segment{{Duration: 500 * time.Millisecond, From: 20, To: 20}})
	failed, err := load.Attack(context.Background(), load.Options{URL: app.URL + "/?fail=1", Pacer: failing, Timeout: time.Second, Labels: load.Labels{Plan: "p", Case: "fail", Run: "1"}}, metrics)
	if err != nil {
		t.Fatal(err)
	}
	if err := prom.WaitForScrape(context.Background(), "attacker", failed.End); err != nil {
		t.Fatal(err)
	}
	api, err := prom.Client()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if got := instant(t, api, `sum(rolloutlab_requests_total{case="ok",code="200",error="none"})`, now); got != float64(summary.Completed) || got != 150 {
		t.Errorf("PromQL total %v, attacker %d, planned 150", got, summary.Completed)
	}
	if got := instant(t, api, `sum(rolloutlab_requests_total{case="fail",error="http_5xx",code="503"})`, now); got != float64(failed.Completed) || got != 10 {
		t.Errorf("PromQL 5xx %v, attacker %d", got, failed.Completed)
	}
	if got := instant(t, api, `sum(rolloutlab_request_duration_seconds_count{case="ok"})`, now); got != 150 {
		t.Errorf("classic histogram count %v", got)
	}
	if got := instant(t, api, `histogram_count(sum(rolloutlab_request_duration_seconds{case="ok"}))`, now); got != 150 {
		t.Errorf("native histogram count %v", got)
	}
	p99 := instant(t, api, `histogram_quantile(0.99, sum by (le) (rolloutlab_request_duration_seconds_bucket{case="ok"}))`, now)
	if p99 <= 0 || p99 > 1 {
		t.Errorf("p99 %v", p99)
	}
	loadStart := instant(t, api, `rolloutlab_phase_timestamp_seconds{case="ok",phase="load_start"}`, now)
	if d := loadStart - float64(summary.Start.UnixNano())/1e9; d > 0.001 || d < -0.001 {
		t.Errorf("load_start marker off by %v s", d)
	}

	// The rest of the standard API answers too.
	r, _, _, err := api.QueryRange(context.Background(), `sum(rate(rolloutlab_requests_total[1s]))`, promv1.Range{Start: summary.Start, End: now, Step: 200 * time.Millisecond})
	if err != nil || len(r.(model.Matrix)) != 1 || len(r.(model.Matrix)[0].Values) < 5 {
		t.Errorf("query_range: %v %v", err, r)
	}
	values, _, _, err := api.LabelValues(context.Background(), "error", nil, time.Time{}, time.Time{})
	if err != nil || len(values) != 2 {
		t.Errorf("label values of error: %v %v", values, err)
	}
	names, _, _, err := api.LabelNames(context.Background(), nil, time.Time{}, time.Time{})
	if err != nil || len(names) < 5 {
		t.Errorf("labels: %v %v", names, err)
	}
	series, _, _, err := api.Series(context.Background(), []string{`rolloutlab_requests_total`}, summary.Start, now)
	if err != nil || len(series) != 2 {
		t.Errorf("series: %v %v", series, err)
	}
	meta, err := api.Metadata(context.Background(), "rolloutlab_requests_total", "")
	if err != nil || len(meta["rolloutlab_requests_total"]) == 0 || meta["rolloutlab_requests_total"][0].Type != promv1.MetricTypeCounter {
		t.Errorf("metadata: %v %v", meta, err)
	}
	build, err := api.Buildinfo(context.Background())
	if err != nil || build.Version != Version {
		t.Errorf("buildinfo: %+v %v", build, err)
	}
	targets, err := api.Targets(context.Background())
	if err != nil || len(targets.Active) != 1 || targets.Active[0].Health != promv1.HealthGood {
		t.Errorf("targets: %+v %v", targets, err)
	}

	// Unauthenticated requests are refused.
	resp, err := http.Get(prom.URL() + "/api/v1/query?query=up")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || strings.Contains(string(body), "rolloutlab") {
		t.Errorf("without token: %d %s", resp.StatusCode, body)
	}

	// Closed and opened read-only, the TSDB answers the same.
	total := instant(t, api, `sum(rolloutlab_requests_total)`, now)
	if err := prom.Close(); err != nil {
		t.Fatal(err)
	}
	ro, err := Start(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	roAPI, _ := ro.Client()
	if got := instant(t, roAPI, `sum(rolloutlab_requests_total)`, now); got != total || got != 160 {
		t.Errorf("read-only total %v, was %v", got, total)
	}
	sandbox := ro.SandboxDir()
	if _, err := os.Stat(sandbox); sandbox == "" || err != nil {
		t.Fatalf("read-only sandbox %q: %v", sandbox, err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sandbox); !os.IsNotExist(err) {
		t.Errorf("the read-only TSDB's temporary directory %s stays: %v", sandbox, err)
	}
}

func TestListensOnLoopbackOnly(t *testing.T) {
	if _, err := Start(Options{Dir: t.TempDir(), Listen: "0.0.0.0:0"}); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("want a loopback error, got %v", err)
	}
	prom, err := Start(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Close()
	host, _, _ := net.SplitHostPort(strings.TrimPrefix(prom.URL(), "http://"))
	if !net.ParseIP(host).IsLoopback() {
		t.Errorf("listening on %s", prom.URL())
	}
}

// A run of minutes leaves head chunks on disk; the read-only TSDB must answer query after query over them (the
// reports make dozens), as fast as the first.
func TestReadOnlyAnswersManyQueriesOverHeadChunks(t *testing.T) {
	dir := t.TempDir()
	db, err := tsdb.Open(dir, nil, nil, tsdb.DefaultOptions(), nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Hour).Truncate(time.Second)
	app := db.Appender(context.Background())
	for i := range 1000 {
		for _, c := range []string{"a", "b", "c"} {
			if _, err := app.Append(0, labels.FromStrings("__name__", "rolloutlab_requests_total", "case", c), start.Add(time.Duration(i)*time.Second).UnixMilli(), float64(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if chunks, _ := os.ReadDir(filepath.Join(dir, "chunks_head")); len(chunks) == 0 {
		t.Fatal("the fixture left no head chunks on disk")
	}
	ro, err := Start(Options{Dir: dir, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	api, _ := ro.Client()
	at := start.Add(999 * time.Second)
	for i := range 5 {
		if got := instant(t, api, `sum(rolloutlab_requests_total)`, at); got != 3*999 {
			t.Fatalf("query %d: %v, want %d", i+1, got, 3*999)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) == 0 {
		t.Error("the stored TSDB was emptied")
	}
}
