package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// askSay sends one GET /say on conn and tells whether a 200 came back; it closes conn.
func askSay(conn net.Conn) bool {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /say?m=hi HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// programming is what a node's kube-proxy says of its network programming latency
// (kubeproxy_network_programming_duration_seconds): observations, mean, and the upper bound of the bucket that
// holds the slowest.
type programming struct {
	count     uint64
	mean, max float64
}

func networkProgramming(t *testing.T, l *Lab, node string) programming {
	t.Helper()
	var ip net.IP
	for _, n := range l.Proxies.Nodes() {
		if n.Name == node {
			ip = n.IP
		}
	}
	resp, err := http.Get("http://" + net.JoinHostPort(ip.String(), strconv.Itoa(kubeproxy.MetricsPort)) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	family, ok := families["kubeproxy_network_programming_duration_seconds"]
	if !ok || len(family.Metric) == 0 {
		t.Fatalf("node %s: kube-proxy exports no network programming latency", node)
	}
	h := family.Metric[0].GetHistogram()
	p := programming{count: h.GetSampleCount(), max: math.Inf(1)}
	if p.count > 0 {
		p.mean = h.GetSampleSum() / float64(p.count)
	}
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() == p.count {
			p.max = b.GetUpperBound()
			break
		}
	}
	return p
}

// With kube-proxy's minSyncPeriod at 10 s (GKE's --iptables-min-sync-period), deletions that come while the rate
// limiter holds the next sync wait for it: the measured service-out grows to seconds by itself, nothing draws it.
// An established connection to a deleted Pod stays on it after every node let it go (conntrack keeps its DNAT), as
// a pooled client's connection does on a cluster.
func TestMinSyncPeriodDelaysServiceOutAndEstablishedConnectionsStay(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 2, Cowweb: []string{cowwebBinary},
		KubeProxy: kubeproxy.Config{Mode: kubeproxy.ModeNFTables, MinSyncPeriod: 10 * time.Second, SyncPeriod: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Down(); err != nil {
			t.Error(err)
		}
	}()
	events, unsubscribe := l.Agent.Events.Subscribe(10000)
	defer unsubscribe()
	ns := "default"
	// A long preStop keeps the deleted Pods serving while the nodes still route to them.
	deploy := cowwebDeployment("slow", 3, 25, "graceful")
	deploy.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](40)
	if _, err := l.Client.AppsV1().Deployments(ns).Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "slow"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "slow"},
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}}}
	if svc, err = l.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	testenv.Eventually(t, "3 Pods Ready", 60*time.Second, func(ctx context.Context) (bool, error) {
		pods, err = readyPods(ctx, l, ns, "slow")
		return len(pods) == 3, err
	})
	waitCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := l.Proxies.WaitProgrammed(waitCtx, ns, "slow", 3); err != nil {
		t.Fatal(err)
	}
	// A kept-alive connection from a node to the first Pod, to ask again after that Pod's service-out.
	node := l.Agent.Nodes[0]
	var kept net.Conn
	var keptRoute kubeproxy.Routed
	for i := 0; i < 50 && keptRoute.PodUID != string(pods[0].UID); i++ {
		if kept != nil {
			kept.Close()
		}
		if kept, keptRoute, err = l.Proxies.DialRouted(ctx, node, net.JoinHostPort(svc.Spec.ClusterIP, "80")); err != nil {
			t.Fatal(err)
		}
	}
	if keptRoute.PodUID != string(pods[0].UID) {
		t.Fatalf("no connection reached %s in 50 tries", pods[0].Name)
	}
	defer kept.Close()
	reader := bufio.NewReader(kept)
	ask := func(when string) {
		t.Helper()
		_ = kept.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(kept, "GET /say?m=kept HTTP/1.1\r\nHost: slow\r\n\r\n"); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		resp, err := http.ReadResponse(reader, nil)
		if err != nil {
			t.Fatalf("%s: the established connection got no answer: %v", when, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %s", when, resp.Status)
		}
	}
	ask("before the deletion")
	// Churn: the three Pods deleted 2 s apart.
	deleted := map[string]time.Time{}
	for i, p := range pods {
		if i > 0 {
			time.Sleep(2 * time.Second)
		}
		if err := l.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		deleted[string(p.UID)] = time.Now()
	}
	out := map[[2]string]time.Duration{} // node, Pod UID → service-out after the deletion request
	timeout := time.After(40 * time.Second)
	for len(out) < len(pods)*len(l.Agent.Nodes) {
		select {
		case e := <-events:
			if e.Type != timeline.EventServiceOut {
				continue
			}
			if at, ok := deleted[e.UID]; ok {
				out[[2]string{e.Node, e.UID}] = e.Time.Sub(at)
			}
		case <-timeout:
			t.Fatalf("service-outs seen: %v", out)
		}
	}
	slowest := time.Duration(0)
	for k, d := range out {
		t.Logf("service-out of %s on %s: %s after the deletion", k[1], k[0], d.Round(time.Millisecond))
		slowest = max(slowest, d)
	}
	// The first deletion after a quiet spell syncs at once; the next ones wait for the rate limiter's 10 s.
	if slowest < 3*time.Second {
		t.Errorf("with minSyncPeriod 10s under churn the slowest service-out took %s, want seconds", slowest)
	}
	ask("after every node's service-out of its Pod")
}

// kube-proxy's iptables mode (the article's Kubernetes 1.18 default) runs too: a Service answers from every node,
// and a deleted Pod's service-out is read from each node's iptables rules. minSyncPeriod 0 is 1.18's "sync at every
// change", not the 1 s kube-proxy v1.37 would default a written 0 to: each node lets go well within a second.
func TestIPTablesModeRoutesAndMeasuresServiceOut(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 2, Cowweb: []string{cowwebBinary},
		KubeProxy: kubeproxy.Config{Mode: kubeproxy.ModeIPTables, MinSyncPeriod: 0, SyncPeriod: 30 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Down(); err != nil {
			t.Error(err)
		}
	}()
	events, unsubscribe := l.Agent.Events.Subscribe(10000)
	defer unsubscribe()
	ns := "default"
	if _, err := l.Client.AppsV1().Deployments(ns).Create(ctx, cowwebDeployment("web", 2, 0, "graceful"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}}}
	if svc, err = l.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pods []corev1.Pod
	testenv.Eventually(t, "2 Pods Ready", 60*time.Second, func(ctx context.Context) (bool, error) {
		pods, err = readyPods(ctx, l, ns, "web")
		return len(pods) == 2, err
	})
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := l.Proxies.WaitProgrammed(waitCtx, ns, "web", 2); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Proxies.Nodes() {
		conn, r, err := l.Proxies.DialRouted(ctx, n.Name, net.JoinHostPort(svc.Spec.ClusterIP, "80"))
		if err != nil {
			t.Fatalf("from %s: %v", n.Name, err)
		}
		if !askSay(conn) || r.PodUID == "" {
			t.Errorf("through %s's iptables rules: route %+v", n.Name, r)
		}
	}
	if err := l.Client.CoreV1().Pods(ns).Delete(ctx, pods[0].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	outs := map[string]time.Duration{}
	var deleted time.Time
	timeout := time.After(20 * time.Second)
	for len(outs) < 2 {
		select {
		case e := <-events:
			if e.Type == timeline.EventDeletionSeen && e.UID == string(pods[0].UID) && deleted.IsZero() {
				deleted = e.Time
			}
			if e.Type == timeline.EventServiceOut && e.UID == string(pods[0].UID) && !deleted.IsZero() {
				outs[e.Node] = e.Time.Sub(deleted)
			}
		case <-timeout:
			t.Fatalf("service-out of the deleted Pod seen on %v, want both nodes", outs)
		}
	}
	for node, d := range outs {
		t.Logf("%s let go after %s", node, d)
		if d > 800*time.Millisecond {
			t.Errorf("%s let go of the deleted Pod after %s with minSyncPeriod 0: kube-proxy ran a minimum after all", node, d)
		}
	}
}
