package app

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
)

// Version is stamped at build time.
var Version = "dev"

// FlavorUpstream is the Flavor of a binary that behaves as cowweb-go v1.1.1 (cmd/cowweb/serve.go since
// --shutdown-gracefully was added): only its flags -p/--port, -s/--slow, -l/--load (default 1024) and
// -g/--shutdown-gracefully (default true); on SIGTERM it shuts down gracefully without a bound, or not at all, and in
// both cases exits with status 0. Plans that run the upstream image map it to such a binary.
const FlavorUpstream = "upstream"

// Flavor is "" for the project's cowweb, FlavorUpstream for one built with
// -ldflags "-X github.com/rollout-lab/rollout-lab/cowweb/app.Flavor=upstream".
var Flavor = ""

// NewCommand is the cowweb command line. terminate is closed when the process receives SIGTERM or SIGINT.
func NewCommand(stdout io.Writer, terminate <-chan struct{}) *cobra.Command {
	root := &cobra.Command{
		Use:           "cowweb",
		Short:         "A cowsay web API for rolling-update experiments",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCommand(stdout, terminate), &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), Version)
			return err
		},
	})
	return root
}

func newServeCommand(stdout io.Writer, terminate <-chan struct{}) *cobra.Command {
	var (
		port     int
		listen   string
		graceful bool
		shutdown string
		cfg      Config
	)
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Serve GET /say, /think, /health and /metrics",
		Long: `Serve the cow API.

  GET /say?m=TEXT    a cow saying TEXT
  GET /think?m=TEXT  a cow thinking TEXT
  GET /health        200 while the process runs
  GET /metrics       Prometheus metrics (requests, in-flight, latency, shutdown timeline)

With --slow every /say and /think first runs load×load cheap pseudo-random calls (the CPU knob).

On SIGTERM:
  immediate  exit at once; requests in flight are cut
  graceful   stop accepting, finish requests in flight, exit (bounded by --shutdown-timeout)
  drain      keep accepting and serving for --drain-delay, then as graceful

--shutdown-gracefully=true|false (cowweb-go v1.1.1) is the same as --shutdown=graceful|immediate.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mode, err := resolveShutdownMode(cmd, shutdown, graceful)
			if err != nil {
				return err
			}
			cfg.Shutdown = mode
			if cfg.RandSource != RandLocked && cfg.RandSource != RandLockFree {
				return fmt.Errorf("--rand-source %q: want %s or %s", cfg.RandSource, RandLocked, RandLockFree)
			}
			if cfg.Load < 0 {
				return fmt.Errorf("--load must not be negative, got %d", cfg.Load)
			}
			if cfg.DrainDelay < 0 || cfg.ShutdownTimeout < 0 || cfg.Delay < 0 {
				return fmt.Errorf("--delay, --drain-delay and --shutdown-timeout must not be negative")
			}
			if cfg.DrainDelay > 0 && mode != ShutdownDrain {
				return fmt.Errorf("--drain-delay needs --shutdown=drain (shutdown is %s)", mode)
			}
			cfg.Listen = listen
			if !cmd.Flags().Changed("listen") {
				cfg.Listen = net.JoinHostPort("", strconv.Itoa(port))
			}
			logger := slog.New(slog.NewJSONHandler(stdout, nil))
			reg := prometheus.NewRegistry()
			return NewServer(cfg, logger, reg, reg).Run(terminate)
		},
	}
	f := cmd.Flags()
	f.IntVarP(&port, "port", "p", 8080, "port to listen on (all addresses)")
	f.BoolVarP(&cfg.Slow, "slow", "s", false, "burn CPU on every cow request (see --load)")
	f.IntVarP(&cfg.Load, "load", "l", 1024, "with --slow, each request runs load×load pseudo-random calls")
	f.BoolVarP(&graceful, "shutdown-gracefully", "g", true, "on SIGTERM shut down gracefully (false: exit at once)")
	shutdown, cfg.RandSource = string(ShutdownGraceful), RandLocked
	if Flavor == FlavorUpstream {
		cmd.Short = "Start the cowweb http server (as cowweb-go v1.1.1)"
		return cmd
	}
	f.StringVar(&listen, "listen", "", "address to listen on, host:port (default \":PORT\")")
	f.StringVar(&cfg.RandSource, "rand-source", RandLocked, "the knob's calls: locked (one mutex-guarded source per process, as v1.1.1 built with Go 1.14) or lock-free (math/rand/v2)")
	f.StringVar(&shutdown, "shutdown", string(ShutdownGraceful), "on SIGTERM: immediate, graceful or drain")
	f.DurationVar(&cfg.Delay, "delay", 0, "wait this long in every /say and /think without using CPU (a backend call)")
	f.DurationVar(&cfg.DrainDelay, "drain-delay", 0, "with --shutdown=drain, how long to keep accepting after SIGTERM")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 0, "bound on a graceful shutdown; 0 waits for every request")
	return cmd
}

func resolveShutdownMode(cmd *cobra.Command, shutdown string, graceful bool) (ShutdownMode, error) {
	mode, err := ParseShutdownMode(shutdown)
	if err != nil {
		return "", fmt.Errorf("--shutdown: %w", err)
	}
	if !cmd.Flags().Changed("shutdown-gracefully") {
		return mode, nil
	}
	legacy := ShutdownImmediate
	if graceful {
		legacy = ShutdownGraceful
	}
	if cmd.Flags().Changed("shutdown") && legacy != mode && !(graceful && mode == ShutdownDrain) {
		return "", fmt.Errorf("--shutdown-gracefully=%t contradicts --shutdown=%s", graceful, mode)
	}
	if cmd.Flags().Changed("shutdown") {
		return mode, nil
	}
	return legacy, nil
}
