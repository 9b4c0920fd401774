package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
	"github.com/rollout-lab/rollout-lab/timeline"
)

var cowwebBinary string

func TestMain(m *testing.M) {
	proxymain.DispatchIfAsked() // the nodes' kube-proxies are this test binary, re-executed
	os.Exit(testenv.MainWithCowweb(m, &cowwebBinary))
}

var _, podNetwork, _ = net.ParseCIDR(cni.PodNetworkCIDR)

func cowwebDeployment(name string, replicas int32, preStopSleep int, shutdown string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	c := corev1.Container{
		Name: "cowweb", Image: "ghcr.io/hhiroshell/cowweb-go/cowweb:v1.1.1", Command: []string{"./cowweb"},
		Args:  []string{"serve", "--port=8080", "--shutdown-gracefully=" + fmt.Sprint(shutdown == "graceful")},
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
		Env:   []corev1.EnvVar{{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromString("http")}},
			InitialDelaySeconds: 1, PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3},
	}
	if preStopSleep > 0 {
		c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", fmt.Sprintf("sleep %d", preStopSleep)}}}}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{TerminationGracePeriodSeconds: ptr.To[int64](10), Containers: []corev1.Container{c}},
			},
		},
	}
}

func readyPods(ctx context.Context, l *Lab, ns, app string) ([]corev1.Pod, error) {
	selector := ""
	if app != "" {
		selector = "app=" + app
	}
	pods, err := l.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	var ready []corev1.Pod
	for _, p := range pods.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
				ready = append(ready, p)
			}
		}
	}
	return ready, nil
}

// restart does what `kubectl rollout restart` does.
func restart(ctx context.Context, l *Lab, ns, name string) error {
	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":%q}}}}}`, time.Now().Format(time.RFC3339))
	_, err := l.Client.AppsV1().Deployments(ns).Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

func TestAgentRunsPodsAndTerminatesThemAsTheKubeletDoes(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 2, Cowweb: []string{cowwebBinary}, Metrics: metrics,
		Images: map[string][]string{"example/ignores-sigterm": {"/bin/sh"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Down(); err != nil {
			t.Error(err)
		}
		if left, err := cni.Namespaces(os.Getpid()); err != nil || len(left) > 0 {
			t.Errorf("network namespaces left: %v %v", left, err)
		}
	}()
	events, unsubscribe := l.Agent.Events.Subscribe(10000)
	defer unsubscribe()

	ns := "default"
	if _, err := l.Client.AppsV1().Deployments(ns).Create(ctx, cowwebDeployment("web", 4, 1, "graceful"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var before []corev1.Pod
	testenv.Eventually(t, "4 Pods Ready", 60*time.Second, func(ctx context.Context) (bool, error) {
		before, err = readyPods(ctx, l, ns, "web")
		return len(before) == 4, err
	})
	nodes := map[string]bool{}
	for _, p := range before {
		nodes[p.Spec.NodeName] = true
		if ip := net.ParseIP(p.Status.PodIP); ip == nil || !podNetwork.Contains(ip) {
			t.Errorf("pod %s IP %q", p.Name, p.Status.PodIP)
		}
	}
	if len(nodes) != 2 {
		t.Errorf("pods on nodes %v, want both", nodes)
	}

	// The Service answers through every node's rules: its cluster IP from inside each node, its NodePort from the
	// host at every node's address.
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort,
		Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}}}
	if svc, err = l.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Proxies.WaitProgrammed(ctx, ns, "web", 4); err != nil {
		t.Fatal(err)
	}
	clusterAddr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	for _, n := range l.Proxies.Nodes() {
		conn, r, err := l.Proxies.DialRouted(ctx, n.Name, clusterAddr)
		if err != nil {
			t.Fatalf("cluster IP from %s: %v", n.Name, err)
		}
		if answered := askSay(conn); !answered {
			t.Errorf("no answer through %s's rules", n.Name)
		}
		host, _, _ := net.SplitHostPort(r.Endpoint)
		if r.PodUID == "" || !podNetwork.Contains(net.ParseIP(host)) {
			t.Errorf("%s's conntrack entry named no Pod: %+v", n.Name, r)
		}
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://%s/say?m=nodeport", net.JoinHostPort(n.IP.String(), fmt.Sprint(svc.Spec.Ports[0].NodePort))))
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("NodePort on %s: %v %v", n.Name, resp, err)
		} else {
			resp.Body.Close()
		}
	}

	// While the rollout runs, open a new connection from a node every few ms and remember where its rules sent it.
	type routed struct {
		at         time.Duration
		node, addr string
	}
	var routes []routed
	stopRouting := make(chan struct{})
	routingDone := make(chan struct{})
	go func() {
		defer close(routingDone)
		for i := 0; ; i++ {
			select {
			case <-stopRouting:
				return
			case <-time.After(5 * time.Millisecond):
			}
			node := l.Agent.Nodes[i%len(l.Agent.Nodes)]
			at := time.Since(l.Agent.Events.Started())
			dialCtx, cancel := context.WithTimeout(ctx, time.Second)
			conn, r, err := l.Proxies.DialRouted(dialCtx, node, clusterAddr)
			cancel()
			if conn != nil {
				conn.Close()
			}
			if r.Endpoint != "" {
				host, _, _ := net.SplitHostPort(r.Endpoint)
				routes = append(routes, routed{at: at, node: node, addr: host})
			} else if err == nil {
				t.Errorf("a connection from %s with no conntrack entry", node)
			}
		}
	}()
	if err := restart(ctx, l, ns, "web"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "all 4 Pods replaced and Ready", 90*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := readyPods(ctx, l, ns, "web")
		if err != nil || len(pods) != 4 {
			return false, err
		}
		for _, p := range pods {
			for _, old := range before {
				if p.UID == old.UID {
					return false, nil
				}
			}
		}
		all, err := l.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		return err == nil && len(all.Items) == 4, err
	})

	close(stopRouting)
	<-routingDone

	// Every old Pod went through deletion → preStop → SIGTERM right after the hook → exit → removal.
	byPod := map[string]map[string]timeline.Event{}
	serviceOut := map[[2]string]time.Duration{} // node, pod IP → when that node stopped routing to it
	timeout := time.After(5 * time.Second)
collect:
	for {
		select {
		case e := <-events:
			if byPod[e.Pod] == nil {
				byPod[e.Pod] = map[string]timeline.Event{}
			}
			byPod[e.Pod][e.Type] = e
			if e.Type == timeline.EventServiceOut {
				serviceOut[[2]string{e.Node, e.PodIP}] = e.Since
			}
		case <-timeout:
			break collect
		}
		// The Pod objects are gone before the agent records their removal: wait for every old Pod's.
		removed := 0
		for _, old := range before {
			if _, ok := byPod[old.Name][timeline.EventPodRemoved]; ok {
				removed++
			}
		}
		if removed == len(before) && len(events) == 0 {
			break collect
		}
	}
	for _, old := range before {
		ev := byPod[old.Name]
		for _, step := range []string{timeline.EventDeletionSeen, timeline.EventPreStopStart, timeline.EventPreStopEnd, timeline.EventSIGTERM, timeline.EventContainerExited, timeline.EventPodRemoved} {
			if _, ok := ev[step]; !ok {
				t.Errorf("pod %s: no %s event (%v)", old.Name, step, ev)
			}
		}
		if len(ev) == 0 {
			continue
		}
		hook := ev[timeline.EventPreStopEnd].Since - ev[timeline.EventPreStopStart].Since
		if hook < 900*time.Millisecond || hook > 2*time.Second {
			t.Errorf("pod %s: preStop sleep 1 took %v", old.Name, hook)
		}
		if gap := ev[timeline.EventSIGTERM].Since - ev[timeline.EventPreStopEnd].Since; gap < 0 || gap > 100*time.Millisecond {
			t.Errorf("pod %s: SIGTERM %v after preStop end, want within 100 ms", old.Name, gap)
		}
		if _, killed := ev[timeline.EventSIGKILL]; killed {
			t.Errorf("pod %s: graceful cowweb was SIGKILLed", old.Name)
		}
		if code := ev[timeline.EventContainerExited].ExitCode; code == nil || *code != 0 {
			t.Errorf("pod %s: exit code %v, want 0 after a graceful shutdown", old.Name, code)
		}
	}

	// No new connection went to a Pod on a node after that node's service-out.
	outs := 0
	for _, old := range before {
		for _, node := range l.Agent.Nodes {
			out, ok := serviceOut[[2]string{node, old.Status.PodIP}]
			if !ok {
				t.Errorf("no service-out of %s on %s", old.Name, node)
				continue
			}
			outs++
			for _, r := range routes {
				if r.node == node && r.addr == old.Status.PodIP && r.at > out {
					t.Errorf("%s routed to %s %v after its service-out", node, old.Name, r.at-out)
				}
			}
		}
	}
	t.Logf("%d routes during the rollout, %d service-outs", len(routes), outs)
	// The metrics count the same steps, and the measured deletion → service-out latency of every Pod and node, which
	// kube-proxy's own programming latency bounds: the rules changed once it programmed the change.
	if got := testutil.ToFloat64(metrics.Events.WithLabelValues(timeline.EventSIGTERM)); got != 4 {
		t.Errorf("sigterm events counted %v, want 4", got)
	}
	var observed uint64
	for _, node := range l.Agent.Nodes {
		h := &dto.Metric{}
		if err := metrics.ServiceOut.WithLabelValues(node).(prometheus.Histogram).Write(h); err != nil {
			t.Fatal(err)
		}
		observed += h.GetHistogram().GetSampleCount()
		programming := networkProgramming(t, l, node)
		if mean := h.GetHistogram().GetSampleSum() / float64(h.GetHistogram().GetSampleCount()); mean <= 0 || mean > programming.max+0.5 {
			t.Errorf("node %s: mean service-out %.3fs after the deletion; kube-proxy's programming took at most %.3fs (bucket bound)", node, mean, programming.max)
		}
		t.Logf("node %s: %d service-outs, mean %.3fs after the deletion; kube-proxy programmed %d changes, mean %.3fs",
			node, h.GetHistogram().GetSampleCount(), h.GetHistogram().GetSampleSum()/float64(h.GetHistogram().GetSampleCount()), programming.count, programming.mean)
	}
	if observed != uint64(outs) {
		t.Errorf("service-out latency observed %d times, events %d", observed, outs)
	}

	// A container that ignores SIGTERM is killed when the grace period ends.
	stubborn := cowwebDeployment("stubborn", 1, 0, "graceful")
	stubborn.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](2)
	stubborn.Spec.Template.Spec.Containers[0].Image = "example/ignores-sigterm"
	stubborn.Spec.Template.Spec.Containers[0].Command = []string{"sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"}
	stubborn.Spec.Template.Spec.Containers[0].Args = nil
	stubborn.Spec.Template.Spec.Containers[0].ReadinessProbe = nil
	if _, err := l.Client.AppsV1().Deployments(ns).Create(ctx, stubborn, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod corev1.Pod
	testenv.Eventually(t, "stubborn Pod Ready", 30*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := readyPods(ctx, l, ns, "stubborn")
		if len(pods) == 1 {
			pod = pods[0]
		}
		return len(pods) == 1, err
	})
	if err := l.Client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var seen, sigkill time.Duration
	deadline := time.After(15 * time.Second)
	for sigkill == 0 {
		select {
		case e := <-events:
			if e.Pod != pod.Name {
				continue
			}
			switch e.Type {
			case timeline.EventDeletionSeen:
				seen = e.Since
			case timeline.EventSIGKILL:
				sigkill = e.Since
			}
		case <-deadline:
			t.Fatal("no SIGKILL for a container that ignores SIGTERM")
		}
	}
	if d := sigkill - seen; d < 1900*time.Millisecond || d > 2300*time.Millisecond {
		t.Errorf("SIGKILL %v after the deletion, want the 2 s grace period", d)
	}
}
