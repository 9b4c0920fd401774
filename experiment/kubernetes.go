package experiment

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"helm.sh/helm/v3/pkg/action"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/timeline"
	"github.com/rollout-lab/rollout-lab/timeline/clusterwatch"
)

// ClusterInfo is what the runner tells the user before it changes anything on a cluster.
type ClusterInfo struct {
	Kubeconfig    string // the file, or the KUBECONFIG list / ~/.kube/config kubectl would read
	Context       string
	Cluster       string
	Server        string
	ServerVersion string
}

// ErrNoContext is returned when no context was named: a plan must never run on whatever the current context is.
var ErrNoContext = errors.New("no kubeconfig context given: name one with --context (or target.context in the plan); " +
	"rollout-lab never uses the current context, so a plan cannot land on a cluster by accident")

// Kubernetes is a real cluster reached through a kubeconfig, as kubectl reaches it.
type Kubernetes struct {
	Info       ClusterInfo
	kubeconfig string
	client     kubernetes.Interface
	recorder   *timeline.Recorder
}

// OpenKubernetes loads the kubeconfig (file, or KUBECONFIG / ~/.kube/config when empty) and the named context, and
// asks the server its version. It installs nothing.
func OpenKubernetes(ctx context.Context, kubeconfig, kubeContext string) (*Kubernetes, error) {
	if kubeContext == "" {
		return nil, ErrNoContext
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext})
	raw, err := loader.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	kc, ok := raw.Contexts[kubeContext]
	if !ok {
		return nil, fmt.Errorf("kubeconfig %s: no context %q", strings.Join(rules.GetLoadingPrecedence(), ":"), kubeContext)
	}
	config, err := loader.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("context %s: %w", kubeContext, err)
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return nil, err
	}
	version, err := client.Discovery().ServerVersion()
	if err != nil {
		return nil, fmt.Errorf("context %s (%s): %w", kubeContext, config.Host, err)
	}
	file := kubeconfig
	if file == "" {
		file = strings.Join(rules.GetLoadingPrecedence(), string(filepath.ListSeparator))
	}
	return &Kubernetes{kubeconfig: kubeconfig, client: client, Info: ClusterInfo{Kubeconfig: file, Context: kubeContext,
		Cluster: kc.Cluster, Server: config.Host, ServerVersion: version.GitVersion}}, nil
}

// Connect records the cluster's events into the session's results and metrics.
func (k *Kubernetes) Connect() Connect {
	return func(_ context.Context, in TargetInputs) (Target, error) {
		var err error
		k.recorder, err = timeline.NewRecorder(filepath.Join(in.Dir, "cluster-events.jsonl"), timeline.NewMetrics(in.Registry))
		return k, err
	}
}

func (k *Kubernetes) Provenance() map[string]string {
	return map[string]string{"kind": "kubernetes", "context": k.Info.Context, "cluster": k.Info.Cluster,
		"server": k.Info.Server, "kubernetes": k.Info.ServerVersion}
}

func (k *Kubernetes) Helm(namespace string, logger *slog.Logger) (*action.Configuration, error) {
	return HelmConfiguration(k.kubeconfig, k.Info.Context, namespace, logger)
}

func (k *Kubernetes) Client() kubernetes.Interface { return k.client }

// WaitServing waits until the Service's EndpointSlices hold every replica ready and load.url answers 200: nothing
// tells the runner when every kube-proxy has programmed them.
func (k *Kubernetes) WaitServing(ctx context.Context, namespace, service string, _, replicas int, c plan.Case) error {
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		slices, err := k.client.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service})
		if err != nil {
			return false, err
		}
		return readyEndpoints(slices.Items) == replicas, nil
	})
	if err != nil {
		return fmt.Errorf("service %s/%s: waiting for %d ready endpoints: %w", namespace, service, replicas, err)
	}
	if c.Load.URL == "" {
		return nil // in-cluster workers reach the Service by its name; the runner cannot
	}
	health := strings.TrimSuffix(c.Load.URL, "/") + "/health" // the chart's probe path
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	return wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

func readyEndpoints(slices []discoveryv1.EndpointSlice) int {
	n := 0
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			if clusterwatch.EndpointReady(ep) {
				n++
			}
		}
	}
	return n
}

// LoadPath is load.url, or for in-cluster workers without one the Service's cluster DNS name.
func (k *Kubernetes) LoadPath(c plan.Case, namespace, service string, port int) LoadPath {
	if c.Load.URL == "" {
		url := fmt.Sprintf("http://%s.%s.svc:%d%s", service, namespace, port, c.Load.Path)
		return LoadPath{URL: url,
			Description:   fmt.Sprintf("%s connections from in-cluster workers → %s (the cluster's DNS and Service routing)", c.Load.Connection, url),
			DescriptionJa: fmt.Sprintf("クラスタ内ワーカーからの%sの接続 → %s (クラスタの DNS と Service のルーティング)", connectionJa(c.Load.Connection), url)}
	}
	url := strings.TrimSuffix(c.Load.URL, "/") + c.Load.Path
	return LoadPath{URL: url,
		Description:   fmt.Sprintf("%s connections → %s (load.url; what lies behind it is the cluster's)", c.Load.Connection, url),
		DescriptionJa: fmt.Sprintf("%sの接続 → %s (load.url。その先はクラスタの構成による)", connectionJa(c.Load.Connection), url)}
}

// Record follows the namespace's Pods, EndpointSlices and Events. A cluster has no node agent telling the runner
// its steps: preStop start and end, SIGTERM, SIGKILL, each node's service-out and the app's listener_closed are
// missing; the kubelet's Killing event (preStop, then SIGTERM, begin) stands in their place.
func (k *Kubernetes) Record(ctx context.Context, namespace string, observe func(timeline.Event)) (func() []timeline.Event, error) {
	return recordWith(ctx, k.recorder, observe,
		func(ctx context.Context, record func(timeline.Event)) error {
			return clusterwatch.WatchEndpointSlices(ctx, k.client, namespace, record)
		},
		func(ctx context.Context, record func(timeline.Event)) error {
			return clusterwatch.WatchPods(ctx, k.client, namespace, record)
		})
}

func (k *Kubernetes) Close() error {
	if k.recorder != nil {
		return k.recorder.Close()
	}
	return nil
}
