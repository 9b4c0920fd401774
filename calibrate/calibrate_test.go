package calibrate

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/rollout-lab/rollout-lab/embedprom"
	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
	"github.com/rollout-lab/rollout-lab/timeline"
)

var cowwebBinary string

func TestMain(m *testing.M) {
	proxymain.DispatchIfAsked() // the lab nodes' kube-proxies are this test binary, re-executed
	os.Exit(testenv.MainWithCowweb(m, &cowwebBinary))
}

// Calibrating the lab through its API, as a cluster is calibrated, measures from outside what the lab reads from
// each node's rules: every node's service-out of every deleted probe agrees with the moment that node's ruleset
// stopped sending new connections to it. The profile holds the cluster's size and kube-proxy's configuration as
// the ConfigMap says, and nothing calibrate made is left.
func TestCalibrationMeasuresWhatEachNodesRulesDo(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	proxy := kubeproxy.Config{Mode: kubeproxy.ModeNFTables, MinSyncPeriod: 2 * time.Second, SyncPeriod: 30 * time.Second}
	l, err := lab.Up(ctx, lab.Options{Dir: t.TempDir(), Nodes: 2, Cowweb: []string{cowwebBinary}, KubeProxy: proxy,
		Background: lab.Background{Services: 40, EndpointsPerService: 3}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Down(); err != nil {
			t.Error(err)
		}
	}()
	events, unsubscribe := l.Agent.Events.Subscribe(100000)
	defer unsubscribe()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// A Prometheus that scrapes the nodes' kube-proxies, as --prometheus-url gives one on a cluster.
	prom, err := embedprom.Start(embedprom.Options{Dir: t.TempDir(), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Close()
	var targets []embedprom.Target
	for _, n := range l.Proxies.Nodes() {
		targets = append(targets, embedprom.Target{Address: net.JoinHostPort(n.IP.String(), strconv.Itoa(kubeproxy.MetricsPort)), Labels: map[string]string{"node": n.Name}})
	}
	if err := prom.SetTargets("kube-proxy", targets); err != nil {
		t.Fatal(err)
	}
	api, err := prom.Client()
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Name: "lab-a", Client: l.Client, Deletions: 2, Hold: 15 * time.Second, Logger: logger, Prometheus: api,
		Helm: func(ns string) (*action.Configuration, error) {
			return experiment.HelmConfiguration(l.Kubeconfig, "", ns, logger)
		}}
	profile, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// 40 background Services and default/kubernetes; 3 endpoints each (the lab's kubernetes Service has none).
	if c := profile.Cluster; c.Nodes != 2 || c.Services != 41 || c.Endpoints != 120 {
		t.Errorf("cluster %+v, want 2 nodes, 41 Services, 120 endpoints", c)
	}
	if k := profile.KubeProxy; k.Mode != "nftables" || k.MinSyncPeriod.D() != 2*time.Second || k.SyncPeriod.D() != 30*time.Second || k.Source != "ConfigMap kube-system/kube-proxy" {
		t.Errorf("kube-proxy %+v", k)
	}
	// kube-proxy's own histogram over the calibration: the probes' changes, the Services' and the Pods' comings
	// and goings, each at most one minSyncPeriod and a sync late.
	if pr := profile.KubeProxy.Programming; pr == nil || pr.Samples < 2 || pr.P50 <= 0 || pr.P99.D() > 10*time.Second {
		t.Errorf("kube-proxy's programming latency %+v", pr)
	} else {
		t.Logf("kube-proxy's programming latency: %+v", *pr)
	}
	if got := profile.Background(); got.Services != 40 || got.EndpointsPerService != 3 {
		t.Errorf("the profile's background %+v, want the lab's 40 × 3", got)
	}
	// What the lab read from each node's rules: deletion seen → service_out, per probe Pod and node.
	fromRules := rulesServiceOut(t, events, DefaultNamespace, 2)
	out := profile.ServiceOut
	if out.Deletions != 2 || out.All.Samples != 4 || len(out.Nodes) != 2 {
		t.Fatalf("service-out %+v, want 2 deletions seen by 2 nodes", out)
	}
	for _, n := range out.Nodes {
		rules := fromRules[n.Node]
		if len(rules) != 2 {
			t.Fatalf("node %s: the lab saw %d service-outs of probes, want 2", n.Node, len(rules))
		}
		shortest, longest := min(rules[0], rules[1]), max(rules[0], rules[1])
		// Calibrate times from its delete request, the lab from the node agent seeing it; a probe tick every 20 ms.
		// Of two samples, p50 is the shorter (nearest rank).
		for _, pair := range []struct {
			what          string
			measured, got time.Duration
		}{{"shorter", n.P50.D(), shortest}, {"longer", n.Max.D(), longest}} {
			if diff := pair.measured - pair.got; diff < -60*time.Millisecond || diff > 150*time.Millisecond {
				t.Errorf("node %s, the %s service-out: calibrate measured %s, the node's rules let go after %s", n.Node, pair.what, pair.measured, pair.got)
			}
		}
		t.Logf("node %s: calibrate p50 %s max %s; from the rules %v", n.Node, n.P50, n.Max, rules)
	}
	if out.Via != "every node's NodePort (InternalIP)" {
		t.Errorf("via %q", out.Via)
	}
	if out.Recommend.PreStopSleep.D() < out.All.Max.D()+out.Recommend.Margin.D() {
		t.Errorf("recommended %s for a longest %s", out.Recommend.PreStopSleep, out.All.Max)
	}
	if _, err := l.Client.CoreV1().Namespaces().Get(ctx, DefaultNamespace, metav1.GetOptions{}); err == nil {
		t.Errorf("namespace %s is still there", DefaultNamespace)
	}
	var summary strings.Builder
	if err := WriteSummary(&summary, profile, "lab-a.yaml", "en"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(summary.String(), "**Recommended preStop sleep: "+out.Recommend.PreStopSleep.String()) ||
		!strings.Contains(summary.String(), "through every node's NodePort (InternalIP)") {
		t.Errorf("summary:\n%s", summary.String())
	}

	// Through a load URL, as the cluster's clients come: a LoadBalancer at a reserved address (the lab's balancer
	// spreads connections over the nodes' NodePorts), where the nodes behind it are not told apart. Each deletion's
	// service-out is then the slowest node's, as that node's rules let the probe go.
	address := freeLoadBalancerAddress(t, l)
	cfg.LoadURL, cfg.Prometheus = "http://"+address, nil
	since := time.Now()
	viaURL, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	byDeletion := rulesServiceOutByDeletion(events, DefaultNamespace, 2, since)
	urlOut := viaURL.ServiceOut
	if urlOut.Deletions != 2 || len(urlOut.Nodes) != 1 || urlOut.Nodes[0].Node != cfg.LoadURL || urlOut.All.Samples != 2 || len(byDeletion) != 2 ||
		urlOut.Via != "the load URL "+cfg.LoadURL+" (Service calibrate, type LoadBalancer)" {
		t.Fatalf("through %s: service-out %+v; the lab saw %v", cfg.LoadURL, urlOut, byDeletion)
	}
	var slowest []time.Duration
	for _, d := range byDeletion {
		if len(d) != 2 {
			t.Fatalf("the lab saw the probe's service-out on %d nodes, want 2: %v", len(d), byDeletion)
		}
		slowest = append(slowest, max(d[l.Proxies.Nodes()[0].Name], d[l.Proxies.Nodes()[1].Name]))
	}
	for _, pair := range []struct {
		what          string
		measured, got time.Duration
	}{{"shorter", urlOut.All.P50.D(), min(slowest[0], slowest[1])}, {"longer", urlOut.All.Max.D(), max(slowest[0], slowest[1])}} {
		// Through the balancer a tick's 4 connections are shared by the nodes: a node still routing to the probe is
		// missed by a tick with a chance of 1/4, so allow a few ticks more.
		if diff := pair.measured - pair.got; diff < -60*time.Millisecond || diff > 250*time.Millisecond {
			t.Errorf("through %s, the %s service-out: calibrate measured %s, the slowest node's rules let go after %s", cfg.LoadURL, pair.what, pair.measured, pair.got)
		}
	}
	t.Logf("through %s: calibrate p50 %s max %s; the slowest node's rules %v", cfg.LoadURL, urlOut.All.P50, urlOut.All.Max, slowest)
	summary.Reset()
	if err := WriteSummary(&summary, viaURL, "lab-a.yaml", "en"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(summary.String(), "until new connections through the load URL "+cfg.LoadURL+" (Service calibrate, type LoadBalancer) no longer reach it") {
		t.Errorf("summary:\n%s", summary.String())
	}
	if _, err := l.Client.CoreV1().Namespaces().Get(ctx, DefaultNamespace, metav1.GetOptions{}); err == nil {
		t.Errorf("namespace %s is still there after the load URL's calibration", DefaultNamespace)
	}
}

// freeLoadBalancerAddress is a load balancer address of the lab that no Service holds, as a cloud's reserved
// static address: one a throwaway LoadBalancer Service got and gave back.
func freeLoadBalancerAddress(t *testing.T, l *lab.Lab) string {
	t.Helper()
	ctx := context.Background()
	services := l.Client.CoreV1().Services("default")
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "address-finder"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
		Selector: map[string]string{"app": "none"}, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
	if _, err := services.Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var address string
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		got, err := services.Get(ctx, svc.Name, metav1.GetOptions{})
		if err != nil || len(got.Status.LoadBalancer.Ingress) == 0 {
			return false, err
		}
		address = got.Status.LoadBalancer.Ingress[0].IP
		return true, nil
	})
	if err != nil {
		t.Fatalf("the throwaway LoadBalancer got no address: %v", err)
	}
	if err := services.Delete(ctx, svc.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	return address
}

// rulesServiceOut reads, from the lab's events so far, each node's service-out of the first deleted Pods of
// namespace (the probes: the rest went when calibrate cleaned up).
func rulesServiceOut(t *testing.T, events <-chan timeline.Event, namespace string, first int) map[string][]time.Duration {
	t.Helper()
	byNode := map[string][]time.Duration{}
	for _, deletion := range rulesServiceOutByDeletion(events, namespace, first, time.Time{}) {
		for node, d := range deletion {
			byNode[node] = append(byNode[node], d)
		}
	}
	return byNode
}

// rulesServiceOutByDeletion reads, from the lab's events so far, the service-out on each node of the first Pods of
// namespace deleted after since, in the order of their deletions.
func rulesServiceOutByDeletion(events <-chan timeline.Event, namespace string, first int, since time.Time) []map[string]time.Duration {
	seen := map[string]time.Time{}
	var order []string
	var outs []timeline.Event
	for {
		select {
		case e := <-events:
			if e.Namespace != namespace {
				continue
			}
			switch e.Type {
			case timeline.EventDeletionSeen:
				if _, ok := seen[e.UID]; !ok && len(seen) < first && e.Time.After(since) {
					seen[e.UID] = e.Time
					order = append(order, e.UID)
				}
			case timeline.EventServiceOut:
				outs = append(outs, e)
			}
			continue
		default:
		}
		break
	}
	byDeletion := make([]map[string]time.Duration, len(order))
	for i, uid := range order {
		byDeletion[i] = map[string]time.Duration{}
		for _, e := range outs {
			if e.UID == uid && e.Time.After(seen[uid]) {
				byDeletion[i][e.Node] = e.Time.Sub(seen[uid])
			}
		}
	}
	return byDeletion
}
