package lab

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
)

// CowwebImages are the images the lab plays with the project's cowweb: the upstream image the chart defaults to
// and the project's own.
var CowwebImages = []string{"ghcr.io/hhiroshell/cowweb-go/cowweb", "ghcr.io/rollout-lab/cowweb"}

// Options configure a lab.
type Options struct {
	// Dir holds the lab's state: certificates, etcd, logs, kubeconfig, container logs, events.
	Dir string
	// Nodes is how many Nodes the node agent runs; default 3.
	Nodes int
	// Cowweb is the argv that runs the project's cowweb (e.g. the runner itself with its cowweb subcommand).
	Cowweb []string
	// Images maps more images to local executables (image or repository → argv).
	Images map[string][]string
	// ServiceOut is the per-node proxy programming delay; zero value: DefaultServiceOutModel.
	ServiceOut *ServiceOutModel
	// LoadBalancer configures the balancers of Services of type LoadBalancer; nil: DefaultLoadBalancer.
	LoadBalancer *LoadBalancerOptions
	// Metrics, when set, get the lab's lifecycle metrics.
	Metrics *Metrics
	Logger  *slog.Logger
}

// Lab is a running lab: control plane, node agent and Pod network.
type Lab struct {
	*ControlPlane
	Agent     *Agent
	Network   Network
	Dataplane *Dataplane
	Balancers *Balancers
}

// Up starts a lab.
func Up(ctx context.Context, opts Options) (_ *Lab, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	images := map[string][]string{}
	if len(opts.Cowweb) > 0 {
		for _, image := range CowwebImages {
			images[image] = opts.Cowweb
		}
	}
	for k, v := range opts.Images {
		images[k] = v
	}
	l := &Lab{}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Down())
		}
	}()
	if l.Network, err = NewNetnsNetwork(); err != nil {
		return l, err
	}
	if l.ControlPlane, err = StartControlPlane(ctx, opts.Dir, opts.Logger); err != nil {
		return l, err
	}
	l.Agent, err = StartAgent(ctx, l.Client, AgentOptions{Nodes: opts.Nodes, Images: images, Network: l.Network,
		StateDir: filepath.Join(opts.Dir, "agent"), Metrics: opts.Metrics, Logger: opts.Logger.With("component", "node-agent")})
	if err != nil {
		return l, err
	}
	model := DefaultServiceOutModel
	if opts.ServiceOut != nil {
		model = *opts.ServiceOut
	}
	if opts.Metrics != nil {
		opts.Metrics.ModelBound.WithLabelValues("min").Set(model.Min.Seconds())
		opts.Metrics.ModelBound.WithLabelValues("max").Set(model.Max.Seconds())
	}
	l.Dataplane, err = StartDataplane(l.Client, l.Agent.Nodes, l.Network.HostIP().String(), model, l.Agent.Events, opts.Logger.With("component", "dataplane"))
	if err != nil {
		return l, err
	}
	balancer := DefaultLoadBalancer
	if opts.LoadBalancer != nil {
		balancer = *opts.LoadBalancer
	}
	l.Balancers, err = StartBalancers(l.Client, l.Dataplane, l.Network, balancer, opts.Metrics, opts.Logger.With("component", "load-balancer"))
	return l, err
}

// Down stops everything the lab started and removes its processes and network; stopping twice is harmless.
func (l *Lab) Down() error {
	var errs []error
	if l.Balancers != nil {
		l.Balancers.Stop()
	}
	if l.Dataplane != nil {
		l.Dataplane.Stop()
	}
	if l.Agent != nil {
		l.Agent.Stop()
	}
	if l.Network != nil {
		errs = append(errs, l.Network.Close())
		l.Network = nil
	}
	if l.ControlPlane != nil {
		errs = append(errs, l.ControlPlane.Stop())
	}
	return errors.Join(errs...)
}
