package cli

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/plan"
)

// clusterFlags are kubectl's flags for reaching a cluster, and the runner's own for running there.
type clusterFlags struct {
	target, kubeconfig, context, namespace, loadURL string
	yes                                             bool
}

func (f *clusterFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.target, "target", "", "lab or kubernetes; default the plan's target.kind")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default KUBECONFIG or ~/.kube/config, as kubectl)")
	fl.StringVar(&f.context, "context", "", "kubeconfig context; required on a cluster (the current context is never used)")
	fl.StringVarP(&f.namespace, "namespace", "n", "", "namespace of the release (default target.namespace, else the plan's name)")
	fl.StringVar(&f.loadURL, "load-url", "", "where the Service is reachable from here on a cluster (sets every case's load.url)")
	fl.BoolVar(&f.yes, "yes", false, "do not ask before installing on a cluster")
}

// load reads the plan with the flags laid over it before it is validated: one set of rules judges a value from the
// file and one from a flag.
func (f *clusterFlags) load(planFile string) (*plan.Plan, error) {
	overrides, err := f.overrides()
	if err != nil {
		return nil, err
	}
	p, err := plan.LoadFileWith(planFile, overrides)
	if err != nil {
		return nil, err
	}
	return p, f.fitsTarget(planFile, p)
}

// overrides are the flags laid over a plan before its validation.
func (f *clusterFlags) overrides() (plan.Overrides, error) {
	if f.target != "" && f.target != "lab" && f.target != "kubernetes" {
		return plan.Overrides{}, fmt.Errorf("--target %q: want lab or kubernetes", f.target)
	}
	return plan.Overrides{LoadURL: f.loadURL, Target: plan.Target{Kind: f.target, Kubeconfig: f.kubeconfig, Context: f.context, Namespace: f.namespace}}, nil
}

// fitsTarget refuses cluster flags for a plan that runs on the lab.
func (f *clusterFlags) fitsTarget(planFile string, p *plan.Plan) error {
	for flag, value := range map[string]string{"kubeconfig": f.kubeconfig, "context": f.context, "namespace": f.namespace} {
		if value != "" && p.Target.Kind == "lab" {
			return fmt.Errorf("--%s is for a cluster; %s runs on the lab (use --target kubernetes)", flag, planFile)
		}
	}
	return nil
}

// connect opens the plan's cluster and asks before anything is installed; nil means the lab.
func (f *clusterFlags) connect(cmd *cobra.Command, planFile string, p *plan.Plan) (experiment.Connect, error) {
	if p.Target.Kind == "lab" {
		return nil, nil
	}
	interactive := false
	if in, ok := cmd.InOrStdin().(*os.File); ok && in != nil {
		interactive = term.IsTerminal(int(in.Fd()))
	}
	if p.Target.Context == "" {
		return nil, experiment.ErrNoContext
	}
	if !f.yes && !interactive {
		// Installing on a cluster is never done unasked: a script or CI says so with --yes.
		return nil, fmt.Errorf("%s runs on a cluster (context %q) and there is no terminal to ask on: pass --yes to go on without asking", planFile, p.Target.Context)
	}
	k, err := experiment.OpenKubernetes(cmd.Context(), p.Target.Kubeconfig, p.Target.Context)
	if err != nil {
		return nil, err
	}
	describeCluster(cmd.ErrOrStderr(), k.Info, p)
	if !f.yes {
		ok, err := confirm(cmd.InOrStdin(), cmd.ErrOrStderr())
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("not confirmed: nothing was installed")
		}
	}
	return k.Connect(), nil
}

// describeCluster says where a plan is about to run and what it will send.
func describeCluster(w io.Writer, info experiment.ClusterInfo, p *plan.Plan) {
	var requests int64
	maxRate := 0.0
	for _, c := range p.Cases {
		requests += c.Requests * int64(p.Repeats)
		maxRate = max(maxRate, c.Load.MaxRate())
	}
	fmt.Fprintf(w, "About to run plan %s on a Kubernetes cluster:\n", p.Name)
	fmt.Fprintf(w, "  context     %s (cluster %s, server %s, Kubernetes %s)\n", info.Context, info.Cluster, info.Server, info.ServerVersion)
	fmt.Fprintf(w, "  kubeconfig  %s\n", info.Kubeconfig)
	fmt.Fprintf(w, "  namespace   %s (Helm release %s; created if missing and then removed at the end)\n", p.Namespace(), experiment.ReleaseName)
	from, to := "this process", plan.RedactURL(p.Cases[0].Load.URL)
	if pods := p.Cases[0].Load.InCluster.Pods; pods > 0 {
		from = fmt.Sprintf("a Job of %d worker Pods", pods)
		if to == "" {
			to = fmt.Sprintf("the Service %s.%s.svc", experiment.ReleaseName, p.Namespace())
		}
	}
	fmt.Fprintf(w, "  load        %d case(s) × %d run(s), %d requests in all, up to %g/s, from %s to %s\n",
		len(p.Cases), p.Repeats, requests, maxRate, from, to)
}

// confirm asks whether to go on; only "y" or "yes" goes on.
func confirm(in io.Reader, out io.Writer) (bool, error) {
	fmt.Fprint(out, "Proceed? [y/N] ")
	answer, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && answer == "" {
		return false, fmt.Errorf("reading the answer: %w", err)
	}
	answer = strings.ToLower(strings.TrimSpace(answer))
	return answer == "y" || answer == "yes", nil
}
