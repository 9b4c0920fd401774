package cli

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"helm.sh/helm/v3/pkg/action"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	corev1 "k8s.io/api/core/v1"

	"github.com/rollout-lab/rollout-lab/calibrate"
	"github.com/rollout-lab/rollout-lab/embedprom"
	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/plan"
)

type calibrateFlags struct {
	kubeconfig, context, namespace string
	output, summary, lang          string
	addressType                    string
	loadURL, loadServiceType       string
	deletions                      int
	hold, margin                   time.Duration
	yes                            bool
	prom                           prometheusFlags
}

func newCalibrateCommand() *cobra.Command {
	var f calibrateFlags
	cmd := &cobra.Command{
		Use:   "calibrate --context CTX -o profile.yaml",
		Short: "Measure how long a cluster's nodes keep sending new connections to a deleted Pod; write a cluster profile a plan's lab plays",
		Long: `calibrate installs probe Pods (the cowweb chart with a long preStop sleep) and a sentinel in a namespace of their
own, gives each probe a NodePort Service, deletes the probes one at a time while opening new connections through
every node's NodePort, and measures per node how long after each deletion new connections still reached the
deleted Pod. With --load-url the probes are reached through that URL instead (a load balancer, an Ingress or a
node address in front of the Service "calibrate" of --load-service-type), as the cluster's clients reach an app;
the nodes behind it are then not told apart. It reads the cluster's size and kube-proxy's configuration (ConfigMap kube-system/kube-proxy), and
kube-proxy's own programming latency from --prometheus-url when given. Everything it made is removed at the end.
The profile (-o) is what a plan's lab plays with lab: {profile: FILE}; the summary says the recommended preStop sleep.
The least privilege it needs: deploy/rbac/calibrate.yaml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runCalibrate(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default KUBECONFIG or ~/.kube/config, as kubectl)")
	fl.StringVar(&f.context, "context", "", "kubeconfig context; required (the current context is never used)")
	fl.StringVarP(&f.namespace, "namespace", "n", calibrate.DefaultNamespace, "namespace of the probes (created and removed when missing)")
	fl.StringVarP(&f.output, "output", "o", "", "write the cluster profile (YAML) to this file")
	fl.StringVar(&f.summary, "summary", "", "write the Markdown summary to this file (default: standard output)")
	fl.StringVar(&f.lang, "lang", "en", "language of the summary: en or ja")
	fl.StringVar(&f.addressType, "address-type", string(corev1.NodeInternalIP), "node address the NodePorts are reached at: InternalIP or ExternalIP")
	fl.StringVar(&f.loadURL, "load-url", "", "probe through this URL instead of every node's NodePort: it must lead to the Service \"calibrate\" (port 80) in the probes' namespace")
	fl.StringVar(&f.loadServiceType, "load-service-type", string(corev1.ServiceTypeLoadBalancer),
		"type of the Service --load-url leads to: LoadBalancer (the URL's address becomes its loadBalancerIP), NodePort (the URL's port becomes its nodePort) or ClusterIP (for an Ingress)")
	fl.IntVar(&f.deletions, "deletions", 4, "probe Pods deleted one at a time (each gives one service-out per node)")
	fl.DurationVar(&f.hold, "hold", 30*time.Second, "a deleted probe's preStop sleep: the longest service-out that can be measured")
	fl.DurationVar(&f.margin, "margin", 2*time.Second, "added to the longest service-out for the recommended preStop sleep")
	fl.BoolVar(&f.yes, "yes", false, "do not ask before installing the probes")
	fl.StringVar(&f.prom.url, "prometheus-url", "", "a Prometheus that scrapes the cluster's kube-proxies: their own programming latency goes into the profile")
	fl.StringVar(&f.prom.tokenFile, "prometheus-token-file", "", "file holding a bearer token for --prometheus-url")
	return cmd
}

func runCalibrate(cmd *cobra.Command, f calibrateFlags) error {
	if f.context == "" {
		return experiment.ErrNoContext
	}
	if f.lang != "en" && f.lang != "ja" {
		return fmt.Errorf("--lang %q: want en or ja", f.lang)
	}
	if f.addressType != string(corev1.NodeInternalIP) && f.addressType != string(corev1.NodeExternalIP) {
		return fmt.Errorf("--address-type %q: want InternalIP or ExternalIP", f.addressType)
	}
	if f.hold < 5*time.Second || f.hold > 5*time.Minute || f.hold%time.Second != 0 {
		return fmt.Errorf("--hold %s: want whole seconds between 5s and 5m (it is the probes' preStop sleep)", f.hold)
	}
	if f.loadURL != "" {
		if _, err := calibrate.ParseLoadURL(f.loadURL, corev1.ServiceType(f.loadServiceType)); err != nil {
			return fmt.Errorf("--load-url: %w", err)
		}
	} else if cmd.Flags().Changed("load-service-type") {
		return fmt.Errorf("--load-service-type without --load-url: the NodePorts are probed through Services of their own")
	}
	interactive := false
	if in, ok := cmd.InOrStdin().(*os.File); ok && in != nil {
		interactive = term.IsTerminal(int(in.Fd()))
	}
	if !f.yes && !interactive {
		return fmt.Errorf("calibrate installs probe Pods on the cluster of context %q and there is no terminal to ask on: pass --yes to go on without asking", f.context)
	}
	k, err := experiment.OpenKubernetes(cmd.Context(), f.kubeconfig, f.context)
	if err != nil {
		return err
	}
	describeCalibration(cmd.ErrOrStderr(), k.Info, f)
	if !f.yes {
		ok, err := confirm(cmd.InOrStdin(), cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("not confirmed: nothing was installed")
		}
	}
	cfg := calibrate.Config{Name: f.context, Client: k.Client(), Namespace: f.namespace, Deletions: f.deletions, Hold: f.hold, Margin: f.margin,
		AddressType: corev1.NodeAddressType(f.addressType), LoadURL: f.loadURL, LoadServiceType: corev1.ServiceType(f.loadServiceType), Logger: slog.Default(),
		Helm: func(namespace string) (*action.Configuration, error) {
			return experiment.HelmConfiguration(f.kubeconfig, f.context, namespace, slog.Default())
		}}
	if f.prom.url != "" {
		token, err := f.prom.token()
		if err != nil {
			return err
		}
		if cfg.Prometheus, err = embedprom.NewClient(f.prom.url, token); err != nil {
			return err
		}
	}
	profile, err := calibrate.Run(cmd.Context(), cfg)
	if err != nil {
		return err
	}
	return writeCalibration(cmd.OutOrStdout(), profile, f)
}

// describeCalibration says what calibrate is about to do, and where.
func describeCalibration(w io.Writer, info experiment.ClusterInfo, f calibrateFlags) {
	fmt.Fprintf(w, "About to calibrate a Kubernetes cluster:\n")
	fmt.Fprintf(w, "  context     %s (cluster %s, server %s, Kubernetes %s)\n", info.Context, info.Cluster, info.Server, info.ServerVersion)
	fmt.Fprintf(w, "  kubeconfig  %s\n", info.Kubeconfig)
	services := fmt.Sprintf("%d NodePort Services", f.deletions)
	probing := fmt.Sprintf("4 new TCP connections every 20 ms to every node's NodePort (%s)", f.addressType)
	if f.loadURL != "" {
		u, _ := calibrate.ParseLoadURL(f.loadURL, corev1.ServiceType(f.loadServiceType)) // checked before
		services = fmt.Sprintf("the %s Service %q", f.loadServiceType, calibrate.LoadServiceName)
		probing = fmt.Sprintf("4 HTTP requests on new connections every 20 ms through %s", u.Redacted())
	}
	fmt.Fprintf(w, "  namespace   %s (created if missing and then removed): %d probe Pods (Helm release %s), a sentinel Pod, %s\n",
		f.namespace, f.deletions, experiment.ReleaseName, services)
	fmt.Fprintf(w, "  probing     %s while each probe is deleted\n", probing)
}

// writeCalibration writes the profile file and the summary.
func writeCalibration(stdout io.Writer, profile *plan.Profile, f calibrateFlags) error {
	name := f.output
	if name != "" {
		if err := plan.WriteProfile(name, profile); err != nil {
			return err
		}
		slog.Info("cluster profile written", "file", name)
	} else {
		name = "FILE"
	}
	var summary bytes.Buffer
	if err := calibrate.WriteSummary(&summary, profile, name, f.lang); err != nil {
		return err
	}
	if f.summary != "" {
		return os.WriteFile(f.summary, summary.Bytes(), 0o644)
	}
	_, err := stdout.Write(summary.Bytes())
	return err
}
