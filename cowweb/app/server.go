// Package app is the cowweb server: a cowsay web API with a CPU knob and selectable shutdown behaviour,
// command-line compatible with cowweb-go v1.1.1.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ShutdownMode says what the server does on SIGTERM.
type ShutdownMode string

const (
	// ShutdownImmediate exits at once: requests in flight are cut (cowweb-go with --shutdown-gracefully=false).
	ShutdownImmediate ShutdownMode = "immediate"
	// ShutdownGraceful closes the listener, then waits for requests in flight (http.Server.Shutdown).
	ShutdownGraceful ShutdownMode = "graceful"
	// ShutdownDrain keeps accepting and serving for the drain delay, then shuts down gracefully.
	ShutdownDrain ShutdownMode = "drain"
)

// ParseShutdownMode accepts the names of the three modes.
func ParseShutdownMode(s string) (ShutdownMode, error) {
	switch m := ShutdownMode(s); m {
	case ShutdownImmediate, ShutdownGraceful, ShutdownDrain:
		return m, nil
	}
	return "", fmt.Errorf("unknown shutdown mode %q (want immediate, graceful or drain)", s)
}

// Config is what `cowweb serve` is told on its command line.
type Config struct {
	Listen string
	Slow   bool
	Load   int
	// RandSource is the knob's random source: RandLocked (default, as v1.1.1 ran) or RandLockFree.
	RandSource string
	// Delay is waited on every cow request without using CPU, as a call to a backend would.
	Delay           time.Duration
	Shutdown        ShutdownMode
	DrainDelay      time.Duration
	ShutdownTimeout time.Duration
}

// ErrExitImmediately is returned by Run when the shutdown mode asks the process to die at once.
var ErrExitImmediately = errors.New("terminated without graceful shutdown")

// Server serves the cow API and carries out the configured shutdown.
type Server struct {
	cfg  Config
	knob *cpuKnob
	// inFlight counts the requests being served, for the sigterm and exit log lines (the gauge cannot be read).
	inFlight atomic.Int64
	metrics  *Metrics
	logger   *slog.Logger
	http     *http.Server
}

// NewServer builds a server whose metrics are registered on reg and exposed with gatherer on /metrics.
func NewServer(cfg Config, logger *slog.Logger, reg prometheus.Registerer, gatherer prometheus.Gatherer) *Server {
	s := &Server{cfg: cfg, metrics: NewMetrics(reg), logger: logger, knob: newCPUKnob(cfg.RandSource)}
	s.metrics.DrainDelayConfigured.Set(cfg.DrainDelay.Seconds())
	s.metrics.ShutdownTimeoutSeconds.Set(cfg.ShutdownTimeout.Seconds())
	mux := http.NewServeMux()
	// POST takes the message from the body: a request an HTTP client may not retry on its own.
	for _, method := range []string{"GET", "POST"} {
		mux.Handle(method+" /say", s.instrument("say", s.cowHandler(Say)))
		mux.Handle(method+" /think", s.instrument("think", s.cowHandler(Think)))
	}
	mux.Handle("GET /health", s.instrument("health", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})))
	mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s
}

func (s *Server) cowHandler(render func(string) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Slow {
			s.knob.burn(s.cfg.Load)
		}
		if s.cfg.Delay > 0 {
			time.Sleep(s.cfg.Delay)
		}
		message := r.URL.Query().Get("m")
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(io.LimitReader(r.Body, maxMessageBytes+1))
			if err != nil {
				http.Error(w, "reading the message: "+err.Error(), http.StatusBadRequest)
				return
			}
			if len(body) > maxMessageBytes {
				http.Error(w, fmt.Sprintf("a message is at most %d bytes", maxMessageBytes), http.StatusRequestEntityTooLarge)
				return
			}
			if len(body) > 0 {
				message = string(body)
			}
		}
		if message == "" {
			message = "Moo!"
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte(render(message)))
	})
}

// maxMessageBytes bounds a posted message.
const maxMessageBytes = 64 << 10

// Random sources of the CPU knob.
const (
	// RandLocked is cowweb-go v1.1.1 as the reference experiment ran it: built with Go 1.14, whose top-level
	// math/rand functions shared one mutex-guarded source per process, so each call takes that lock and concurrent
	// requests of one Pod contend for it.
	RandLocked = "locked"
	// RandLockFree is math/rand/v2's top-level functions (per-thread sources, no lock): what v1.1.1 rebuilt with
	// Go ≥ 1.20 would do. Cheaper per call and free of contention — another experiment.
	RandLockFree = "lock-free"
)

// upstreamCows is len(cows) in cowweb-go v1.1.1: Neo-cowsay v1.0.1's 48 cowfiles less the 3 it leaves out.
const upstreamCows = 45

// lockedSource is Go 1.14's top-level math/rand source: one generator behind a mutex.
type lockedSource struct {
	mu  sync.Mutex
	src mathrand.Source
}

func (s *lockedSource) Int63() int64 {
	s.mu.Lock()
	n := s.src.Int63()
	s.mu.Unlock()
	return n
}

func (s *lockedSource) Seed(seed int64) {
	s.mu.Lock()
	s.src.Seed(seed)
	s.mu.Unlock()
}

// cpuKnob is cowweb-go's --slow: each request runs load×load calls of rand.Intn(len(cows)).
type cpuKnob struct {
	source string
	locked *mathrand.Rand // the process's one locked source, as Go 1.14's global one
}

func newCPUKnob(source string) *cpuKnob {
	return &cpuKnob{source: source, locked: mathrand.New(&lockedSource{src: mathrand.NewSource(1)})}
}

// burn is --slow's work for one request: load×load calls (v1.1.1 nests two loops of load; the count is the same).
func (k *cpuKnob) burn(load int) int { return k.burnCalls(load * load) }

// burnCalls makes n calls of rand.Intn(len(cows)) on the knob's source.
func (k *cpuKnob) burnCalls(n int) int {
	sink := 0
	if k.source == RandLockFree {
		for i := 0; i < n; i++ {
			sink += rand.IntN(upstreamCows)
		}
		return sink
	}
	for i := 0; i < n; i++ {
		sink += k.locked.Intn(upstreamCows)
	}
	return sink
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Server) instrument(handler string, next http.Handler) http.Handler {
	duration := s.metrics.Duration.WithLabelValues(handler)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		s.metrics.InFlight.Inc()
		s.inFlight.Add(1)
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		defer func() {
			end := time.Now()
			s.metrics.InFlight.Dec()
			s.inFlight.Add(-1)
			duration.Observe(end.Sub(start).Seconds())
			s.metrics.Requests.WithLabelValues(handler, strconv.Itoa(rec.code)).Inc()
			s.metrics.LastRequestFinished.Set(unixSeconds(end))
		}()
		next.ServeHTTP(rec, r)
	})
}

// Run listens, serves until terminate is closed, then shuts down as configured. It returns
// ErrExitImmediately in immediate mode so that main can end the process without waiting for anything.
func (s *Server) Run(terminate <-chan struct{}) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ln, terminate)
}

// Serve is Run on a listener the caller opened.
func (s *Server) Serve(ln net.Listener, terminate <-chan struct{}) error {
	ln = &notifyingListener{Listener: ln, onClose: func() {
		now := time.Now()
		s.metrics.ListenerClosed.Set(unixSeconds(now))
		s.logger.Info("listener closed", "event", "listener_closed", "at", now)
	}}
	s.logger.Info("listening", "event", "listening", "addr", ln.Addr().String(), "at", time.Now(),
		"shutdown", s.cfg.Shutdown, "slow", s.cfg.Slow, "load", s.cfg.Load, "delay", s.cfg.Delay)
	served := make(chan error, 1)
	go func() { served <- s.http.Serve(ln) }()

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-terminate:
	}
	now := time.Now()
	s.metrics.SigtermReceived.Set(unixSeconds(now))
	s.logger.Info("SIGTERM received", "event", "sigterm", "at", now, "shutdown", s.cfg.Shutdown, "in_flight", s.inFlight.Load())

	switch s.cfg.Shutdown {
	case ShutdownImmediate:
		// What this exit cuts.
		s.logger.Info("exit", "event", "exit", "at", time.Now(), "code", 128+int(syscall.SIGTERM), "in_flight", s.inFlight.Load())
		return ErrExitImmediately
	case ShutdownDrain:
		s.metrics.setPhase(PhaseDraining)
		// Asking clients to close after each response moves keep-alive clients to other endpoints while we still serve.
		s.http.SetKeepAlivesEnabled(false)
		time.Sleep(s.cfg.DrainDelay)
		s.logger.Info("drained", "event", "drained", "at", time.Now(), "drain_delay", s.cfg.DrainDelay.String())
	}
	s.metrics.setPhase(PhaseClosing)
	ctx := context.Background()
	if s.cfg.ShutdownTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.ShutdownTimeout)
		defer cancel()
	}
	if err := s.http.Shutdown(ctx); err != nil {
		s.logger.Warn("graceful shutdown timed out; closing open connections", "event", "shutdown_timeout",
			"at", time.Now(), "timeout", s.cfg.ShutdownTimeout.String())
		return errors.Join(fmt.Errorf("graceful shutdown: %w", err), s.http.Close())
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	s.logger.Info("exit", "event", "exit", "at", time.Now(), "code", 0, "in_flight", s.inFlight.Load())
	return nil
}

// notifyingListener reports the moment the server stops accepting, which http.Server does not expose.
type notifyingListener struct {
	net.Listener
	once    sync.Once
	onClose func()
}

func (l *notifyingListener) Close() error {
	err := l.Listener.Close()
	l.once.Do(l.onClose)
	return err
}
