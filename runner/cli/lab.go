package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/lab/controlplane"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
	"github.com/rollout-lab/rollout-lab/lab/owner"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// labState is what a running `runner lab up` leaves in its directory for `lab status` and `lab down`.
type labState struct {
	PID int `json:"pid"`
	// Owner tells the lab's process from another that got its PID after a crash or reboot.
	Owner      owner.Owner `json:"owner"`
	Server     string      `json:"server"`
	Kubeconfig string      `json:"kubeconfig"`
	Nodes      int         `json:"nodes"`
	// NodeAddresses are the nodes' addresses on the lab's node network, which the host routes to: NodePorts answer
	// there, and each node's kube-proxy serves /healthz on :10256 and /metrics on :10249.
	NodeAddresses map[string]string `json:"nodeAddresses"`
	KubeProxy     string            `json:"kubeProxy"`
}

const labStateFile = "lab.json"

// serviceURL writes a forwarded Service port as a URL: https for the port HTTPS conventionally uses (the API
// server's among them) or a port named https, else http.
func serviceURL(portName string, port int, address string) string {
	if port == 443 || port == 6443 || portName == "https" || strings.HasPrefix(portName, "https-") {
		return "https://" + address
	}
	return "http://" + address
}

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
		nodes  int
		images []string
		proxy  = kubeproxy.DefaultConfig
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
			if proxy.MinSyncPeriod < 0 || proxy.MinSyncPeriod > plan.MaxMinSyncPeriod || proxy.SyncPeriod <= 0 {
				return fmt.Errorf("--min-sync-period %s and --sync-period %s: want 0 ≤ min-sync-period ≤ %s and a sync period above 0",
					proxy.MinSyncPeriod, proxy.SyncPeriod, plan.MaxMinSyncPeriod)
			}
			l, err := lab.Up(cmd.Context(), lab.Options{Dir: abs, Nodes: nodes, Cowweb: cowwebCommand(self, slog.Default()), Images: imageMap,
				KubeProxy: proxy, KubeProxyCommand: []string{self, proxymain.Subcommand}, Logger: slog.Default()})
			if err != nil {
				return err
			}
			defer l.Down()
			me, err := owner.Self()
			if err != nil {
				return err
			}
			state := labState{PID: me.PID, Owner: me, Server: l.Server, Kubeconfig: l.Kubeconfig, Nodes: nodes,
				NodeAddresses: map[string]string{}, KubeProxy: l.Proxies.Config().String()}
			for _, n := range l.Proxies.Nodes() {
				state.NodeAddresses[n.Name] = n.IP.String()
			}
			data, _ := json.MarshalIndent(state, "", "  ")
			if err := rundir.WriteFileAtomic(filepath.Join(abs, labStateFile), data, 0o644); err != nil {
				return err
			}
			defer os.Remove(filepath.Join(abs, labStateFile))
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "lab up: Kubernetes %s at %s, %d node(s), %s (API usable after %s)\n", controlplane.KubernetesVersion, l.Server, nodes,
				l.Proxies.Config(), l.APIReadyAfter.Round(time.Millisecond))
			fmt.Fprintf(out, "  export KUBECONFIG=%s\n  kubectl get nodes\nrunner lab status shows the nodes' addresses, NodePorts and load balancers; Ctrl-C (or runner lab down) stops the lab.\n", l.Kubeconfig)
			<-cmd.Context().Done()
			fmt.Fprintln(out, "lab stopping")
			return l.Down()
		},
	}
	up.Flags().IntVar(&nodes, "nodes", 3, "Nodes the node agent runs")
	up.Flags().StringArrayVar(&images, "image", nil, "IMAGE=COMMAND: run containers of IMAGE (or of that repository) with COMMAND (repeatable)")
	up.Flags().StringVar(&proxy.Mode, "kube-proxy-mode", proxy.Mode, "the nodes' kube-proxy mode: nftables or iptables")
	up.Flags().DurationVar(&proxy.MinSyncPeriod, "min-sync-period", proxy.MinSyncPeriod, "kube-proxy's minSyncPeriod (--iptables-min-sync-period): least time between rule syncs")
	up.Flags().DurationVar(&proxy.SyncPeriod, "sync-period", proxy.SyncPeriod, "kube-proxy's syncPeriod: full resync interval")
	return up
}

func newLabDownCommand(dirFlag *string) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop a lab started with `runner lab up` and remove what a crashed one left (network namespaces, bridge)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			state, err := readLabState(*dirFlag)
			switch {
			case err != nil:
			case !state.Owner.Alive():
				// The lab is gone (crash, reboot); its PID may belong to another process now: leave that alone.
				fmt.Fprintf(cmd.OutOrStdout(), "the lab of %s is no longer running (process %d is not it): nothing to stop\n",
					filepath.Join(*dirFlag, labStateFile), state.PID)
				if err := os.Remove(filepath.Join(*dirFlag, labStateFile)); err != nil && !os.IsNotExist(err) {
					return err
				}
			default:
				if err := syscall.Kill(state.PID, syscall.SIGTERM); err == nil {
					for i := 0; i < 300 && state.Owner.Alive(); i++ {
						time.Sleep(100 * time.Millisecond)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "stopped the lab of process %d\n", state.PID)
				}
			}
			if os.Geteuid() != 0 {
				return nil
			}
			cleaned, err := cni.CleanStale()
			if !cleaned.Empty() {
				// Whatever was removed, the user learns it (a crashed run's leftovers go silently otherwise).
				fmt.Fprintf(cmd.OutOrStdout(), "removed what dead labs left: %d network namespaces %v, %d processes in them, %d bridges %v\n",
					len(cleaned.Namespaces), cleaned.Namespaces, cleaned.Processes, len(cleaned.Links), cleaned.Links)
			}
			return err
		},
	}
}

func newLabStatusCommand(dirFlag *string) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the running lab: server, kubeconfig, Nodes and Pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			state, err := readLabState(*dirFlag)
			if err != nil {
				return err
			}
			config, err := clientcmd.BuildConfigFromFlags("", state.Kubeconfig)
			if err != nil {
				return err
			}
			client, err := kubernetes.NewForConfig(config)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "lab of process %d: %s\nkubeconfig: %s\n", state.PID, state.Server, state.Kubeconfig)
			nodeList, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, n := range nodeList.Items {
				fmt.Fprintf(out, "node %s %s Pod CIDR %s\n", n.Name, state.NodeAddresses[n.Name], n.Spec.PodCIDR)
			}
			if state.KubeProxy != "" {
				fmt.Fprintf(out, "every node runs %s (healthz :10256, metrics :10249)\n", state.KubeProxy)
			}
			pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, p := range pods.Items {
				fmt.Fprintf(out, "pod %s/%s %s %s on %s\n", p.Namespace, p.Name, p.Status.Phase, p.Status.PodIP, p.Spec.NodeName)
			}
			services, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, s := range services.Items {
				for _, in := range s.Status.LoadBalancer.Ingress {
					for _, p := range s.Spec.Ports {
						fmt.Fprintf(out, "load balancer %s/%s:%d → %s\n", s.Namespace, s.Name, p.Port, serviceURL(p.Name, int(p.Port), net.JoinHostPort(in.IP, fmt.Sprint(p.Port))))
					}
				}
			}
			addresses := make([]string, 0, len(state.NodeAddresses))
			for _, ip := range state.NodeAddresses {
				addresses = append(addresses, ip)
			}
			sort.Strings(addresses)
			for _, s := range services.Items {
				for _, p := range s.Spec.Ports {
					if p.NodePort == 0 || len(addresses) == 0 {
						continue
					}
					fmt.Fprintf(out, "node port %s/%s:%d → %s (and the same port on every node)\n", s.Namespace, s.Name, p.Port,
						serviceURL(p.Name, int(p.Port), net.JoinHostPort(addresses[0], fmt.Sprint(p.NodePort))))
				}
			}
			return nil
		},
	}
}

func readLabState(dir string) (labState, error) {
	var s labState
	data, err := os.ReadFile(filepath.Join(dir, labStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("no lab is running from %s (runner lab up --dir %s starts one)", dir, dir)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("%s: %w", filepath.Join(dir, labStateFile), err)
	}
	if s.PID <= 0 {
		return s, fmt.Errorf("%s: no process id", filepath.Join(dir, labStateFile))
	}
	return s, nil
}
