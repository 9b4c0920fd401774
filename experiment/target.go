package experiment

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"helm.sh/helm/v3/pkg/action"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/lab/controlplane"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/lab/loadbalancer"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/timeline"
	"github.com/rollout-lab/rollout-lab/timeline/clusterwatch"
)

// Target is where the app runs and how load reaches it: the one part that differs between the embedded lab and a
// real cluster. Everything else in an apply is one code path.
type Target interface {
	// Provenance describes the target for the results (no credentials).
	Provenance() map[string]string
	// Helm is the Helm SDK's configuration for the namespace (the kubeconfig's, on the lab and on a cluster).
	Helm(namespace string, logger *slog.Logger) (*action.Configuration, error)
	// Client is the Kubernetes API.
	Client() kubernetes.Interface
	// WaitServing waits until the Service sends new connections to every one of its replicas.
	WaitServing(ctx context.Context, namespace, service string, port, replicas int, c plan.Case) error
	// LoadPath is where a case's load goes, the dialer that takes it there, and the way in words.
	LoadPath(c plan.Case, namespace, service string, port int) LoadPath
	// Record records the lifecycle of the namespace's Pods until stop, which returns the events; observe (when
	// not nil) sees each event as it is recorded.
	Record(ctx context.Context, namespace string, observe func(timeline.Event)) (stop func() []timeline.Event, err error)
	// Close releases the target (the lab stops).
	Close() error
}

// LoadPath is where a case's load goes and how.
type LoadPath struct {
	URL string
	// Dial takes the load there; nil: the host's network.
	Dial load.DialFunc
	// Description and DescriptionJa say the way in words, for the report (empty when the target cannot tell).
	Description, DescriptionJa string
}

// TargetInputs are what a target is opened from, as kind's providers are: explicit values, not the session.
type TargetInputs struct {
	Plan *plan.Plan
	// Registry takes the target's metrics (the lab's, a cluster's recorded events), served with the load's.
	Registry prometheus.Registerer
	// Dir is the results directory.
	Dir    string
	Logger *slog.Logger
	// ScrapeKubeProxies has the nodes' kube-proxies scraped with the run (nil: nothing scrapes them).
	ScrapeKubeProxies func([]kubeproxy.Node) error
}

// Connect opens a target.
type Connect func(ctx context.Context, in TargetInputs) (Target, error)

// labTarget is the embedded lab, started for one apply.
type labTarget struct {
	lab     *lab.Lab
	tempDir string        // the lab's state when no directory was given: removed with the lab
	profile *plan.Profile // the cluster profile the lab plays, if any
}

// LabOptions are the lab a plan's lab section describes (profile included): what `runner apply` starts and
// `runner lab up --plan` gives kubectl and helm users.
func LabOptions(p *plan.Plan) lab.Options {
	return lab.Options{Nodes: p.Lab.Nodes, Images: p.Lab.Images,
		KubeProxy:    kubeproxy.Config{Mode: p.Lab.KubeProxy.Mode, MinSyncPeriod: p.Lab.KubeProxy.MinSyncPeriod.D(), SyncPeriod: p.Lab.KubeProxy.SyncPeriod.D()},
		Background:   lab.Background{Services: p.Lab.Background.Services, EndpointsPerService: p.Lab.Background.EndpointsPerService},
		LoadBalancer: &loadbalancer.Options{Mode: p.Lab.LoadBalancer.Mode, IdleTimeout: p.Lab.LoadBalancer.IdleTimeout.D()},
		NodeCPU:      int64(p.Lab.NodeCPU), ReservedCPU: int64(p.Lab.ReservedCPU)}
}

// ConnectLab starts the lab the plan describes, in dir or (when empty) a temporary directory removed on Close.
func ConnectLab(dir string, cowweb []string) Connect {
	return func(ctx context.Context, in TargetInputs) (Target, error) {
		t := &labTarget{profile: in.Plan.Lab.Profile}
		if dir == "" {
			// The lab's keys and etcd are not results: keep them out of the results directory.
			var err error
			if dir, err = os.MkdirTemp("", "rollout-lab-"); err != nil {
				return nil, err
			}
			t.tempDir = dir
		}
		opts := LabOptions(in.Plan)
		opts.Dir, opts.Cowweb = dir, cowweb
		opts.Metrics, opts.Logger = lab.NewMetrics(in.Registry), in.Logger.With("component", "lab")
		l, err := lab.Up(ctx, opts)
		t.lab = l
		if err == nil && in.ScrapeKubeProxies != nil {
			err = in.ScrapeKubeProxies(l.Proxies.Nodes())
		}
		if err != nil {
			return nil, errors.Join(err, t.Close())
		}
		return t, nil
	}
}

func (t *labTarget) Provenance() map[string]string {
	return map[string]string{"kind": "lab", "kubernetes": controlplane.KubernetesVersion, "nodes": fmt.Sprint(len(t.lab.Agent.Nodes)),
		"kubeProxy": t.lab.Proxies.Config().String(), "serviceOut": "measured: each node's ruleset as kube-proxy commits it (nft monitor)",
		"loadBalancer": t.lab.Balancers.Mode(),
		"cpuModel":     t.lab.CPU.String(), "cpuModelJa": t.lab.CPU.StringJa(), "nodeCPU": cgroups.FormatMilliCPU(t.lab.CPU.NodeMilli), "cgroup": t.lab.CPU.Cgroup,
		"background": fmt.Sprintf("%d Services × %d endpoints", t.lab.Background.Services, t.lab.Background.EndpointsPerService),
		"profile":    profileProvenance(t.profile)}
}

// profileProvenance names the cluster profile a lab played, or says it played the plan's own lab settings.
func profileProvenance(p *plan.Profile) string {
	if p == nil {
		return "none: lab defaults and the plan's lab section"
	}
	return p.Describe()
}

func (t *labTarget) Helm(namespace string, logger *slog.Logger) (*action.Configuration, error) {
	return HelmConfiguration(t.lab.Kubeconfig, "", namespace, logger)
}

func (t *labTarget) Client() kubernetes.Interface { return t.lab.Client }

func (t *labTarget) WaitServing(ctx context.Context, namespace, service string, port, replicas int, _ plan.Case) error {
	return t.lab.Proxies.WaitProgrammed(ctx, namespace, service, replicas)
}

// LoadPath sends the load to the Service's load balancer when it has one (the reference experiment's path: the
// balancer → a node's NodePort → that node's kube-proxy rules → a Pod), else to the Service's cluster IP from inside
// a node (round robin over the nodes), as a client on a node would. Either way each connection knows the Pod it was
// routed to, read from the node's conntrack entry, for attribution.
func (t *labTarget) LoadPath(c plan.Case, namespace, service string, port int) LoadPath {
	nodes := t.lab.Proxies.Nodes()
	if ip, ok := t.lab.Balancers.Ingress(namespace, service); ok {
		path := LoadPath{URL: fmt.Sprintf("http://%s%s", net.JoinHostPort(ip.String(), fmt.Sprint(port)), c.Load.Path),
			Description: fmt.Sprintf("%s connections → the Service's %s load balancer (%s:%d) → a node's NodePort (round robin over %d nodes, health-checked on kube-proxy's :10256) → the node's kube-proxy rules (%s) → a Pod",
				c.Load.Connection, t.lab.Balancers.Mode(), ip, port, len(nodes), t.lab.Proxies.Config()),
			DescriptionJa: fmt.Sprintf("%sの接続 → Service の %s ロードバランサー (%s:%d) → ノードの NodePort (%d ノードをラウンドロビン、kube-proxy の :10256 でヘルスチェック) → ノードの kube-proxy のルール (%s) → Pod",
				connectionJa(c.Load.Connection), t.lab.Balancers.Mode(), ip, port, len(nodes), t.lab.Proxies.Config())}
		dialer := &net.Dialer{KeepAlive: 30 * time.Second}
		dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			client := conn.LocalAddr().String()
			route := func() load.Route {
				r, _ := t.lab.Balancers.RouteOf(client)
				return load.Route{Endpoint: r.Endpoint, Pod: r.PodUID, Node: r.Node}
			}
			load.ReportRoute(ctx, route)
			return load.NewRoutedConn(conn, route), nil
		}
		path.Dial = dial
		return path
	}
	clusterIP := service + "." + namespace
	if svc, err := t.lab.Client.CoreV1().Services(namespace).Get(context.Background(), service, metav1.GetOptions{}); err == nil && svc.Spec.ClusterIP != "" {
		clusterIP = svc.Spec.ClusterIP
	}
	var next atomic.Uint64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		node := nodes[int(next.Add(1)-1)%len(nodes)].Name
		conn, r, err := t.lab.Proxies.DialRouted(ctx, node, addr)
		route := func() load.Route { return load.Route{Endpoint: r.Endpoint, Pod: r.PodUID, Node: r.Node} }
		load.ReportRoute(ctx, route)
		if err != nil {
			return nil, err
		}
		return load.NewRoutedConn(conn, route), nil
	}
	return LoadPath{URL: fmt.Sprintf("http://%s%s", net.JoinHostPort(clusterIP, fmt.Sprint(port)), c.Load.Path), Dial: dial,
		Description: fmt.Sprintf("%s connections from the nodes (round robin over %d) → Service %s/%s's cluster IP %s:%d → the node's kube-proxy rules (%s) → a Pod",
			c.Load.Connection, len(nodes), namespace, service, clusterIP, port, t.lab.Proxies.Config()),
		DescriptionJa: fmt.Sprintf("ノードからの%sの接続 (%d ノードをラウンドロビン) → Service %s/%s の cluster IP %s:%d → ノードの kube-proxy のルール (%s) → Pod",
			connectionJa(c.Load.Connection), len(nodes), namespace, service, clusterIP, port, t.lab.Proxies.Config())}
}

// connectionJa names a connection model in Japanese.
func connectionJa(model string) string {
	if model == plan.ConnectionPerUser {
		return "ユーザーごと"
	}
	return "プール"
}

// Record takes the node agent's and the dataplane's events, and endpoint changes from an EndpointSlice informer.
func (t *labTarget) Record(ctx context.Context, namespace string, observe func(timeline.Event)) (func() []timeline.Event, error) {
	return recordWith(ctx, t.lab.Agent.Events, observe, func(ctx context.Context, record func(timeline.Event)) error {
		return clusterwatch.WatchEndpointSlices(ctx, t.lab.Client, namespace, record)
	})
}

func (t *labTarget) Close() error {
	var err error
	if t.lab != nil {
		err = t.lab.Down()
	}
	if t.tempDir != "" {
		err = errors.Join(err, os.RemoveAll(t.tempDir))
	}
	return err
}

// recordWith subscribes to the recorder, starts the watches (which record into it) and returns the function that
// stops them and hands over what was recorded in between.
func recordWith(ctx context.Context, recorder *timeline.Recorder, observe func(timeline.Event), watches ...func(context.Context, func(timeline.Event)) error) (func() []timeline.Event, error) {
	events, unsubscribe := recorder.Subscribe(100000)
	collected := collect(events, observe)
	watchCtx, stopWatches := context.WithCancel(ctx)
	for _, watch := range watches {
		if err := watch(watchCtx, func(e timeline.Event) { recorder.Record(e) }); err != nil {
			stopWatches()
			unsubscribe()
			return nil, err
		}
	}
	return func() []timeline.Event {
		stopWatches()
		unsubscribe()
		return collected()
	}, nil
}

// collect gathers events until the channel closes; the returned function waits for that and hands them over.
func collect(events <-chan timeline.Event, observe func(timeline.Event)) func() []timeline.Event {
	var (
		mu       sync.Mutex
		recorded []timeline.Event
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range events {
			if observe != nil {
				observe(e)
			}
			mu.Lock()
			recorded = append(recorded, e)
			mu.Unlock()
		}
	}()
	return func() []timeline.Event {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return recorded
	}
}
