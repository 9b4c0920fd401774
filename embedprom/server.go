// Package embedprom is a Prometheus inside the runner's process, built from prometheus/prometheus packages: a TSDB
// in the run's results directory, the real scrape manager, the PromQL engine and the standard HTTP API on loopback.
package embedprom

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/route"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/util/notifications"
	apiv1 "github.com/prometheus/prometheus/web/api/v1"
	"github.com/rollout-lab/rollout-lab/internal/fileutil"
)

// Version is what /api/v1/status/buildinfo reports for the embedded server: the Prometheus release of its packages.
const Version = "3.16.0"

// Options configure an embedded Prometheus.
type Options struct {
	// Dir holds the TSDB.
	Dir string
	// ScrapeInterval is how often targets are scraped; default 1 s.
	ScrapeInterval time.Duration
	// Listen is the API's address; default 127.0.0.1:0. It must be a loopback address.
	Listen string
	// ReadOnly opens an existing TSDB for queries only: nothing is scraped or written.
	ReadOnly bool
	Logger   *slog.Logger
}

// Target is one endpoint to scrape.
type Target struct {
	Address     string // host:port
	MetricsPath string // default /metrics
	Labels      map[string]string
}

// Server is a running embedded Prometheus.
type Server struct {
	opts   Options
	logger *slog.Logger
	db     *tsdb.DB
	// readOnly is a copy of the stored TSDB, opened as a whole (Prometheus' DBReadOnly reloads the WAL for every
	// query and fails a second one once head chunks are on disk); sandbox holds it and is removed on close.
	readOnly  *tsdb.DB
	sandbox   string
	queryable storage.SampleAndChunkQueryable
	engine    *promql.Engine
	scraper   *scrape.Manager
	targets   chan map[string][]*targetgroup.Group
	cfg       *config.Config
	jobs      map[string][]Target
	mu        sync.Mutex
	http      *http.Server
	listener  net.Listener
	token     string
	started   time.Time
	stop      func()
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Start opens the TSDB, starts scraping and serves the HTTP API.
func Start(opts Options) (*Server, error) {
	if opts.ScrapeInterval <= 0 {
		opts.ScrapeInterval = time.Second
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:0"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := requireLoopback(opts.Listen); err != nil {
		return nil, err
	}
	s := &Server{opts: opts, logger: opts.Logger, jobs: map[string][]Target{}, started: time.Now(), done: make(chan struct{})}
	// A registry of its own: the engine and the TSDB register collectors that a shared registry would reject twice.
	reg := prometheus.NewRegistry()
	if err := s.openStorage(reg); err != nil {
		return nil, err
	}
	s.engine = promql.NewEngine(promql.EngineOpts{
		Logger:               opts.Logger.With("component", "query engine"),
		Reg:                  reg,
		MaxSamples:           50_000_000,
		Timeout:              2 * time.Minute,
		LookbackDelta:        5 * time.Minute,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		Parser:               parser.NewParser(parser.Options{}),
	})
	token, err := newToken()
	if err != nil {
		s.closeStorage()
		return nil, err
	}
	s.token = token
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	if !opts.ReadOnly {
		if err := s.startScraping(reg); err != nil {
			cancel()
			s.closeStorage()
			return nil, err
		}
	}
	if err := s.serve(ctx, reg); err != nil {
		cancel()
		if s.scraper != nil {
			s.scraper.Stop()
		}
		s.closeStorage()
		return nil, err
	}
	return s, nil
}

func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("prometheus listen address %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("prometheus listen address %q: the embedded Prometheus listens on loopback only", addr)
	}
	return nil
}

func newToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("prometheus API token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (s *Server) openStorage(reg prometheus.Registerer) error {
	if s.opts.ReadOnly {
		if _, err := os.Stat(s.opts.Dir); err != nil {
			return fmt.Errorf("open TSDB %s: %w", s.opts.Dir, err)
		}
		sandbox, err := os.MkdirTemp("", "rollout-lab-tsdb-sandbox")
		if err != nil {
			return err
		}
		s.sandbox = sandbox
		copied := filepath.Join(sandbox, "tsdb")
		if err := copyTree(s.opts.Dir, copied); err != nil {
			return fmt.Errorf("open TSDB %s read-only: copy: %w", s.opts.Dir, err)
		}
		opts := tsdb.DefaultOptions()
		opts.RetentionDuration = 0 // keep every sample, however old
		db, err := tsdb.Open(copied, s.logger.With("component", "tsdb"), nil, opts, nil)
		if err != nil {
			return fmt.Errorf("open TSDB %s read-only: %w", s.opts.Dir, err)
		}
		s.readOnly, s.queryable = db, db
		return nil
	}
	if err := os.MkdirAll(s.opts.Dir, 0o755); err != nil {
		return err
	}
	tsdbOpts := tsdb.DefaultOptions()
	db, err := tsdb.Open(s.opts.Dir, s.logger.With("component", "tsdb"), reg, tsdbOpts, nil)
	if err != nil {
		return fmt.Errorf("open TSDB %s: %w", s.opts.Dir, err)
	}
	s.db, s.queryable = db, db
	return nil
}

func (s *Server) closeStorage() error {
	if s.db != nil {
		return s.db.Close()
	}
	if s.readOnly != nil {
		return errors.Join(s.readOnly.Close(), os.RemoveAll(s.sandbox))
	}
	if s.sandbox != "" {
		return os.RemoveAll(s.sandbox)
	}
	return nil
}

// LastSample is the time of the newest sample stored (zero when none).
func (s *Server) LastSample() time.Time {
	db := s.db
	if db == nil {
		db = s.readOnly
	}
	if db == nil {
		return time.Time{}
	}
	maxT := int64(math.MinInt64)
	if h := db.Head(); h.NumSeries() > 0 {
		maxT = h.MaxTime()
	}
	for _, b := range db.Blocks() {
		maxT = max(maxT, b.Meta().MaxTime)
	}
	if maxT == math.MinInt64 {
		return time.Time{}
	}
	return time.UnixMilli(maxT).UTC()
}

// SandboxDir is the scratch directory of a read-only TSDB (empty otherwise).
func (s *Server) SandboxDir() string { return s.sandbox }

// copyTree copies the TSDB directory src to dst, file by file (not hard links: opening the copy may truncate or
// append to its files), without the lock file of a Prometheus that has it open.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		if rel == "lock" || !d.Type().IsRegular() {
			return nil
		}
		return fileutil.CopyNew(path, target, 0o600)
	})
}

func (s *Server) scrapeConfigYAML() string {
	var b strings.Builder
	fmt.Fprintf(&b, "global:\n  scrape_interval: %s\n  scrape_timeout: %s\n", model.Duration(s.opts.ScrapeInterval), model.Duration(s.opts.ScrapeInterval))
	b.WriteString("scrape_configs:\n")
	s.mu.Lock()
	defer s.mu.Unlock()
	for job, targets := range s.jobs {
		path := "/metrics"
		if len(targets) > 0 && targets[0].MetricsPath != "" {
			path = targets[0].MetricsPath
		}
		// Classic buckets stay next to the native histogram, so older Prometheus releases and histogram_quantile
		// over _bucket series read the same data.
		fmt.Fprintf(&b, "  - job_name: %q\n    metrics_path: %q\n    scrape_native_histograms: true\n    always_scrape_classic_histograms: true\n", job, path)
	}
	return b.String()
}

func (s *Server) startScraping(reg prometheus.Registerer) error {
	cfg, err := config.Load(s.scrapeConfigYAML(), s.logger)
	if err != nil {
		return fmt.Errorf("scrape config: %w", err)
	}
	s.cfg = cfg
	scraper, err := scrape.NewManager(&scrape.Options{DiscoveryReloadOnStartup: true, DiscoveryReloadInterval: model.Duration(100 * time.Millisecond)},
		s.logger.With("component", "scrape manager"), nil, nil, s.db, reg)
	if err != nil {
		return fmt.Errorf("scrape manager: %w", err)
	}
	if err := scraper.ApplyConfig(cfg); err != nil {
		return fmt.Errorf("scrape config: %w", err)
	}
	s.scraper = scraper
	s.targets = make(chan map[string][]*targetgroup.Group)
	go func() {
		if err := scraper.Run(s.targets); err != nil {
			s.logger.Error("scrape manager stopped", "err", err)
		}
	}()
	return nil
}

// SetTargets replaces the endpoints of a job, as service discovery would.
func (s *Server) SetTargets(job string, targets []Target) error {
	if s.scraper == nil {
		return errors.New("prometheus: read-only, nothing is scraped")
	}
	s.mu.Lock()
	_, known := s.jobs[job]
	s.jobs[job] = targets
	s.mu.Unlock()
	if !known {
		cfg, err := config.Load(s.scrapeConfigYAML(), s.logger)
		if err != nil {
			return fmt.Errorf("scrape config: %w", err)
		}
		if err := s.scraper.ApplyConfig(cfg); err != nil {
			return fmt.Errorf("scrape config: %w", err)
		}
		s.mu.Lock()
		s.cfg = cfg
		s.mu.Unlock()
	}
	group := &targetgroup.Group{Source: job}
	for _, t := range targets {
		set := model.LabelSet{model.AddressLabel: model.LabelValue(t.Address)}
		for k, v := range t.Labels {
			set[model.LabelName(k)] = model.LabelValue(v)
		}
		group.Targets = append(group.Targets, set)
	}
	s.targets <- map[string][]*targetgroup.Group{job: {group}}
	return nil
}

// WaitForScrape blocks until every target of job has been scraped after t: the data up to t is in the TSDB.
func (s *Server) WaitForScrape(ctx context.Context, job string, t time.Time) error {
	deadline := time.NewTimer(5*s.opts.ScrapeInterval + 5*time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(s.opts.ScrapeInterval / 10)
	defer tick.Stop()
	for {
		ok, err := s.scrapedSince(ctx, job, t)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("prometheus: no scrape of job %s after %s", job, t.Format(time.RFC3339Nano))
		case <-tick.C:
		}
	}
}

func (s *Server) scrapedSince(ctx context.Context, job string, t time.Time) (bool, error) {
	q, err := s.queryable.Querier(t.UnixMilli(), time.Now().Add(time.Minute).UnixMilli())
	if err != nil {
		return false, err
	}
	defer q.Close()
	set := q.Select(ctx, false, nil, labels.MustNewMatcher(labels.MatchEqual, "__name__", "up"), labels.MustNewMatcher(labels.MatchEqual, "job", job))
	s.mu.Lock()
	want := len(s.jobs[job])
	s.mu.Unlock()
	fresh := 0
	for set.Next() {
		it := set.At().Iterator(nil)
		for it.Next() != 0 {
			// Strictly after t's millisecond: a scrape stamped in the same millisecond may have started (and read the
			// counters) before t, which the test of `runner attack` caught once (99 of 100 requests in Prometheus).
			// Prometheus stamps a scrape with its start, truncated to the millisecond or aligned earlier, never later.
			if ts, v := it.At(); ts > t.UnixMilli() && v == 1 {
				fresh++
				break
			}
		}
	}
	return fresh >= want && want > 0, set.Err()
}

type emptyRules struct{}

func (emptyRules) RuleGroups() []*rules.Group           { return nil }
func (emptyRules) AlertingRules() []*rules.AlertingRule { return nil }
func (emptyRules) Alertmanagers() []*url.URL            { return nil }
func (emptyRules) DroppedAlertmanagers() []*url.URL     { return nil }

// noTargets answers the targets endpoints of a read-only server.
type noTargets struct{}

func (noTargets) ScrapePools() []string                       { return nil }
func (noTargets) TargetsActive() map[string][]*scrape.Target  { return nil }
func (noTargets) TargetsDropped() map[string][]*scrape.Target { return nil }
func (noTargets) TargetsDroppedCounts() map[string]int        { return nil }
func (noTargets) ScrapePoolConfig(string) (*config.ScrapeConfig, error) {
	return nil, errors.New("read-only")
}

func (s *Server) serve(ctx context.Context, reg *prometheus.Registry) error {
	ln, err := net.Listen("tcp", s.opts.Listen)
	if err != nil {
		return fmt.Errorf("prometheus API: %w", err)
	}
	s.listener = ln
	var targets interface {
		apiv1.TargetRetriever
		apiv1.ScrapePoolsRetriever
	} = noTargets{}
	if s.scraper != nil {
		targets = s.scraper
	}
	hostname, _ := os.Hostname()
	cwd, _ := os.Getwd()
	var admin apiv1.TSDBAdminStats
	if s.db != nil {
		admin = tsdbAdmin{s.db}
	}
	api := apiv1.NewAPI(s.engine, s.queryable, nil, nil,
		func(context.Context) apiv1.ScrapePoolsRetriever { return targets },
		func(context.Context) apiv1.TargetRetriever { return targets },
		func(context.Context) apiv1.AlertmanagerRetriever { return emptyRules{} },
		func() config.Config {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.cfg == nil {
				return config.DefaultConfig
			}
			return *s.cfg
		},
		map[string]string{"storage.tsdb.path": s.opts.Dir},
		apiv1.GlobalURLOptions{ListenAddress: ln.Addr().String(), Host: ln.Addr().String(), Scheme: "http"},
		func(f http.HandlerFunc) http.HandlerFunc { return f },
		admin, s.opts.Dir,
		false, // admin API off
		false, 0,
		s.logger.With("component", "api"),
		func(context.Context) apiv1.RulesRetriever { return emptyRules{} },
		0, 1, 1<<20,
		false, nil,
		func() (apiv1.RuntimeInfo, error) {
			return apiv1.RuntimeInfo{StartTime: s.started, CWD: cwd, Hostname: hostname, ServerTime: time.Now(),
				ReloadConfigSuccess: true, GoroutineCount: runtime.NumGoroutine(), GOMAXPROCS: runtime.GOMAXPROCS(0)}, nil
		},
		&apiv1.PrometheusVersion{Version: Version, GoVersion: runtime.Version(), Branch: "embedded", Revision: "rollout-lab"},
		func() []notifications.Notification { return nil },
		nil,
		reg, reg, nil,
		false, nil, false, false, false,
		5*time.Minute,
		false, false, nil, nil,
		apiv1.OpenAPIOptions{ExternalURL: "http://" + ln.Addr().String(), Version: Version},
		parser.NewParser(parser.Options{}),
		false, 2*time.Minute,
	)
	router := route.New()
	api.Register(router.WithPrefix("/api/v1"))
	mux := http.NewServeMux()
	mux.Handle("/api/v1/", router)
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Prometheus is Healthy.") })
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "Prometheus is Ready.") })
	s.http = &http.Server{Handler: s.authenticate(mux), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		defer close(s.done)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("prometheus API stopped", "err", err)
		}
	}()
	return nil
}

// authenticate requires the server's bearer token (or basic auth with it as the password, for tools that only have that).
func (s *Server) authenticate(next http.Handler) http.Handler {
	want := []byte("Bearer " + s.token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got := []byte(r.Header.Get("Authorization"))
		if _, password, ok := r.BasicAuth(); ok {
			got = []byte("Bearer " + password)
		}
		if subtle.ConstantTimeCompare(got, want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="rollout-lab prometheus"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// URL is the base URL of the HTTP API.
func (s *Server) URL() string { return "http://" + s.listener.Addr().String() }

// WriteToken stores the token in a file only the owner can read, for Grafana, curl and `runner report`.
func (s *Server) WriteToken(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(s.token+"\n"), 0o600)
}

// Close stops scraping and serving and closes the TSDB cleanly, so a stock Prometheus can open it.
// Closing again returns the first result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	var errs []error
	if s.scraper != nil {
		s.scraper.Stop()
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.http != nil {
		errs = append(errs, s.http.Shutdown(shutdownCtx))
		<-s.done
	}
	s.stop()
	errs = append(errs, s.closeStorage())
	return errors.Join(errs...)
}

// tsdbAdmin gives the API the TSDB's status, as Prometheus' own storage wrapper does.
type tsdbAdmin struct{ db *tsdb.DB }

func (a tsdbAdmin) CleanTombstones() error { return a.db.CleanTombstones() }
func (a tsdbAdmin) Delete(ctx context.Context, mint, maxt int64, ms ...*labels.Matcher) error {
	return a.db.Delete(ctx, mint, maxt, ms...)
}
func (a tsdbAdmin) Snapshot(dir string, withHead bool) error { return a.db.Snapshot(dir, withHead) }
func (a tsdbAdmin) Stats(statsByLabelName string, limit int) (*tsdb.Stats, error) {
	return a.db.Head().Stats(statsByLabelName, limit), nil
}
func (a tsdbAdmin) WALReplayStatus() (tsdb.WALReplayStatus, error) {
	return tsdb.WALReplayStatus{}, nil
}
func (a tsdbAdmin) BlockMetas() ([]tsdb.BlockMeta, error) {
	var metas []tsdb.BlockMeta
	for _, b := range a.db.Blocks() {
		metas = append(metas, b.Meta())
	}
	return metas, nil
}

// DeleteSeries removes the samples up to `until` of the series matching all matchers, as the admin API's
// delete_series does: a resumed experiment drops what an interrupted run left so its rerun counts from nothing.
// (A tombstone hides every sample in its range, later appends too: hence the bound.)
func (s *Server) DeleteSeries(ctx context.Context, matchers map[string]string, until time.Time) error {
	if s.db == nil {
		return errors.New("delete series: the TSDB is open read-only")
	}
	var ms []*labels.Matcher
	for name, value := range matchers {
		ms = append(ms, labels.MustNewMatcher(labels.MatchEqual, name, value))
	}
	if len(ms) == 0 {
		return errors.New("delete series: no matcher")
	}
	return s.db.Delete(ctx, math.MinInt64, until.UnixMilli(), ms...)
}
