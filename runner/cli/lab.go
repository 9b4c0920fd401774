package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/controlplane"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
	"github.com/rollout-lab/rollout-lab/plan"
)

// CowwebSubcommand makes the runner binary play the cowweb image in the lab: `runner cowweb serve ...`.
const CowwebSubcommand = "cowweb"

// cowwebCommand is how the lab's Pods run the project's cowweb: the cowweb binary `make build` puts beside the
// runner (a small Go HTTP server), or else the runner itself playing it (`runner cowweb`: the whole runner in every
// Pod, about eight times the memory), which it says once.
func cowwebCommand(self string, logger *slog.Logger) []string {
	standalone := filepath.Join(filepath.Dir(self), "cowweb")
	if info, err := os.Stat(standalone); err == nil && info.Mode().IsRegular() && info.Mode().Perm()&0o111 != 0 {
		return []string{standalone}
	}
	logger.Warn("no cowweb binary beside the runner: the lab's cowweb Pods run the runner itself (make build puts bin/cowweb beside bin/runner)",
		"looked_for", standalone)
	return []string{self, CowwebSubcommand}
}

func newLabCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "The embedded Kubernetes: a real control plane in one process, Pods as local processes",
	}
	cmd.PersistentFlags().StringVar(&dir, "dir", ".lab", "the lab's state directory (certificates, etcd, logs, kubeconfig)")
	cmd.AddCommand(newLabUpCommand(&dir), newLabDownCommand(&dir), newLabStatusCommand(&dir))
	return cmd
}

func newLabUpCommand(dirFlag *string) *cobra.Command {
	var (
		nodes    int
		images   []string
		proxy    = kubeproxy.DefaultConfig
		planFile string
	)
	up := &cobra.Command{
		Use:   "up",
		Short: "Start the lab in the foreground until Ctrl-C; kubectl and helm work with the kubeconfig it prints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			abs, err := filepath.Abs(*dirFlag)
			if err != nil {
				return err
			}
			imageMap := map[string][]string{}
			for _, mapping := range images {
				image, command, ok := strings.Cut(mapping, "=")
				if !ok || image == "" || strings.TrimSpace(command) == "" {
					return fmt.Errorf("--image %q: want IMAGE=COMMAND, e.g. example/app=/usr/local/bin/app", mapping)
				}
				imageMap[image] = strings.Fields(command)
			}
			opts, played, err := labUpOptions(cmd, planFile, lab.Options{Nodes: nodes, Images: imageMap, KubeProxy: proxy})
			if err != nil {
				return err
			}
			opts.Dir, opts.Cowweb, opts.KubeProxyCommand, opts.Logger = abs, cowwebCommand(self, slog.Default()), []string{self, proxymain.Subcommand}, slog.Default()
			l, err := lab.Up(cmd.Context(), opts)
			if err != nil {
				return err
			}
			defer l.Down()
			removeState, err := lab.WriteState(abs, l)
			if err != nil {
				return err
			}
			defer removeState()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "lab up: Kubernetes %s at %s, %d node(s), %s (API usable after %s)\n", controlplane.KubernetesVersion, l.Server, len(l.Agent.Nodes),
				l.Proxies.Config(), l.APIReadyAfter.Round(time.Millisecond))
			if opts.Background.Services > 0 {
				fmt.Fprintf(out, "  background: %d Services × %d endpoints in namespace %s (made in %s)\n", opts.Background.Services, opts.Background.EndpointsPerService,
					lab.BackgroundNamespace, l.BackgroundTook.Round(time.Millisecond))
			}
			if played != "" {
				fmt.Fprintf(out, "  playing %s\n", played)
			}
			fmt.Fprintf(out, "  export KUBECONFIG=%s\n  kubectl get nodes\nrunner lab status shows the nodes' addresses, NodePorts and load balancers; Ctrl-C (or runner lab down) stops the lab.\n", l.Kubeconfig)
			<-cmd.Context().Done()
			fmt.Fprintln(out, "lab stopping")
			return l.Down()
		},
	}
	up.Flags().StringVar(&planFile, "plan", "", "start the lab a plan's lab section describes (its cluster profile included) instead of the flags")
	up.Flags().IntVar(&nodes, "nodes", 3, "Nodes the node agent runs")
	up.Flags().StringArrayVar(&images, "image", nil, "IMAGE=COMMAND: run containers of IMAGE (or of that repository) with COMMAND (repeatable)")
	up.Flags().StringVar(&proxy.Mode, "kube-proxy-mode", proxy.Mode, "the nodes' kube-proxy mode: nftables or iptables")
	up.Flags().DurationVar(&proxy.MinSyncPeriod, "min-sync-period", proxy.MinSyncPeriod, "kube-proxy's minSyncPeriod (--iptables-min-sync-period): least time between rule syncs")
	up.Flags().DurationVar(&proxy.SyncPeriod, "sync-period", proxy.SyncPeriod, "kube-proxy's syncPeriod: full resync interval")
	return up
}

// labFlags are lab up's flags that a plan's lab section sets instead.
var labFlags = []string{"nodes", "image", "kube-proxy-mode", "min-sync-period", "sync-period"}

// labUpOptions are the lab the flags describe, or the plan's lab section (then those flags are refused, so the lab
// is what the plan says); played names the plan's cluster profile, if any.
func labUpOptions(cmd *cobra.Command, planFile string, fromFlags lab.Options) (opts lab.Options, played string, err error) {
	if planFile == "" {
		proxy := fromFlags.KubeProxy
		if proxy.MinSyncPeriod < 0 || proxy.MinSyncPeriod > plan.MaxMinSyncPeriod || proxy.SyncPeriod <= 0 {
			return opts, "", fmt.Errorf("--min-sync-period %s and --sync-period %s: want 0 ≤ min-sync-period ≤ %s and a sync period above 0",
				proxy.MinSyncPeriod, proxy.SyncPeriod, plan.MaxMinSyncPeriod)
		}
		return fromFlags, "", nil
	}
	for _, name := range labFlags {
		if cmd.Flags().Changed(name) {
			return opts, "", fmt.Errorf("--%s: with --plan the plan's lab section sets the lab; leave --%s out", name, name)
		}
	}
	p, err := plan.LoadFile(planFile)
	if err != nil {
		return opts, "", err
	}
	if p.Target.Kind != "lab" {
		return opts, "", fmt.Errorf("%s: target.kind is %s; lab up starts the lab of a plan with target kind lab", planFile, p.Target.Kind)
	}
	if p.Lab.Profile != nil {
		played = p.Lab.Profile.Describe()
	}
	return experiment.LabOptions(p), played, nil
}

func newLabDownCommand(dirFlag *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop a lab started with `runner lab up` and remove what a crashed one left (network namespaces, bridge)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.Stop(*dirFlag, cmd.OutOrStdout())
		},
	}
}

func newLabStatusCommand(dirFlag *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the running lab: server, kubeconfig, Nodes and Pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			state, err := lab.ReadState(*dirFlag)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			return state.WriteStatus(ctx, cmd.OutOrStdout())
		},
	}
}
