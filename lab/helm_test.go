package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/charts"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/plan"
)

func helmConfig(t *testing.T, kubeconfig, namespace string) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig, flags.Namespace = ptr.To(kubeconfig), ptr.To(namespace)
	cfg := &action.Configuration{}
	if err := cfg.Init(flags, namespace, "secret", func(string, ...any) {}); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// The project's chart, installed with the Helm SDK into a namespace that enforces the "restricted" Pod Security
// Standard, runs 8 replicas on the lab; a restart replaces them all; a Pod whose readiness fails gets no traffic.
func TestHelmChartOnTheLab(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 3, Cowweb: []string{cowwebBinary}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Down()

	const ns = "restricted"
	namespace := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}}
	if _, err := l.Client.CoreV1().Namespaces().Create(ctx, namespace, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The admission really enforces it: a privileged Pod is refused.
	privileged := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "privileged"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
		Name: "c", Image: "example/x", SecurityContext: &corev1.SecurityContext{Privileged: ptr.To(true)}}}}}
	if _, err := l.Client.CoreV1().Pods(ns).Create(ctx, privileged, metav1.CreateOptions{}); err == nil {
		t.Fatal("a privileged Pod was admitted in a restricted namespace")
	}

	p, err := plan.Parse("helm-test.yaml", []byte(`
name: helm-test
app:
  replicas: 8
  probes:
    readiness: {initialDelay: 1s}
    liveness: {initialDelay: 1s}
  preStop: {sleep: 2s}
  terminationGracePeriod: 10s
load: {rate: 1, duration: 1s}
`))
	if err != nil {
		t.Fatal(err)
	}
	chart, err := charts.Cowweb()
	if err != nil {
		t.Fatal(err)
	}
	install := action.NewInstall(helmConfig(t, l.Kubeconfig, ns))
	install.ReleaseName, install.Namespace = "cowweb", ns
	install.Wait, install.Timeout = true, 2*time.Minute
	start := time.Now()
	if _, err := install.Run(chart, charts.CowwebValues(p.Cases[0].App)); err != nil {
		pods, _ := l.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		for _, p := range pods.Items {
			t.Logf("pod %s %s %v", p.Name, p.Status.Phase, p.Status.Conditions)
		}
		t.Fatalf("helm install: %v", err)
	}
	t.Logf("helm install --wait of 8 replicas: %v", time.Since(start))
	before, err := readyPods(ctx, l, ns, "")
	if err != nil || len(before) != 8 {
		t.Fatalf("%d Pods ready after install --wait: %v", len(before), err)
	}
	for _, pod := range before {
		assertRunsAs(t, l, pod, 65532)
	}
	// The chart's Service is of type LoadBalancer: helm's wait (the code path of --wait) waited for the ingress
	// address the lab's balancer set, and the app answers there.
	svc, err := l.Client.CoreV1().Services(ns).Get(ctx, "cowweb", metav1.GetOptions{})
	if err != nil || svc.Spec.Type != corev1.ServiceTypeLoadBalancer || len(svc.Status.LoadBalancer.Ingress) != 1 {
		t.Fatalf("Service: %+v %v", svc, err)
	}
	ingress := svc.Status.LoadBalancer.Ingress[0].IP
	if ip := net.ParseIP(ingress); ip == nil || !podNetwork.Contains(ip) {
		t.Errorf("ingress address %s is not in the lab's range %s", ingress, podNetwork)
	}
	// Ready Pods reach the nodes' rules at kube-proxy's next sync, up to minSyncPeriod later — on a cloud that moment
	// hides inside the minute a new balancer takes to be provisioned; the lab's balancer is there at once.
	waitCtx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	if err := l.Proxies.WaitProgrammed(waitCtx, ns, "cowweb", 8); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + ingress + ":80/say?m=balanced")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "balanced") {
		t.Errorf("through the balancer: %d %s", resp.StatusCode, body)
	}
	if err := restart(ctx, l, ns, "cowweb"); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, "all 8 Pods replaced", 2*time.Minute, func(ctx context.Context) (bool, error) {
		pods, err := l.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(pods.Items) != 8 {
			return false, err
		}
		for _, p := range pods.Items {
			for _, old := range before {
				if p.UID == old.UID {
					return false, nil
				}
			}
		}
		ready, err := readyPods(ctx, l, ns, "")
		return len(ready) == 8, err
	})

	// A Pod behind the same Service whose readiness never passes receives no new connection.
	broken := cowwebDeployment("broken", 1, 0, "graceful")
	broken.Namespace = "default"
	broken.Spec.Template.Labels["app.kubernetes.io/name"] = "cowweb"
	broken.Spec.Template.Spec.Containers[0].ReadinessProbe.HTTPGet.Path = "/not-found"
	if _, err := l.Client.AppsV1().Deployments("default").Create(ctx, broken, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	good := cowwebDeployment("good", 2, 0, "graceful")
	good.Spec.Template.Labels["app.kubernetes.io/name"] = "cowweb"
	if _, err := l.Client.AppsV1().Deployments("default").Create(ctx, good, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc = &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "mixed"}, Spec: corev1.ServiceSpec{Selector: map[string]string{"app.kubernetes.io/name": "cowweb"},
		Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}}}
	if svc, err = l.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var brokenIP string
	testenv.Eventually(t, "the broken Pod running and the good ones Ready", time.Minute, func(ctx context.Context) (bool, error) {
		pods, err := l.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=broken"})
		if err != nil || len(pods.Items) != 1 || pods.Items[0].Status.PodIP == "" {
			return false, err
		}
		brokenIP = pods.Items[0].Status.PodIP
		ready, err := readyPods(ctx, l, "default", "good")
		return len(ready) == 2, err
	})
	time.Sleep(3 * time.Second) // several failed readiness probes and proxy syncs
	nodes := l.Proxies.Nodes()
	for i := 0; i < 60; i++ {
		conn, r, err := l.Proxies.DialRouted(ctx, nodes[i%len(nodes)].Name, net.JoinHostPort(svc.Spec.ClusterIP, "80"))
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if r.Endpoint == fmt.Sprintf("%s:8080", brokenIP) {
			t.Fatalf("connection %d routed to the Pod whose readiness fails", i)
		}
	}
}

// assertRunsAs checks a Pod's process: its user and group, no capabilities, no way to gain privileges, and its
// private home directory.
func assertRunsAs(t *testing.T, l *Lab, pod corev1.Pod, uid int) {
	t.Helper()
	pid, ok := l.Agent.ContainerPID(pod.UID, pod.Spec.Containers[0].Name)
	if !ok {
		t.Fatalf("pod %s: no running container", pod.Name)
	}
	// The chart's image is played by the program the lab was given for it (the small cowweb binary), not another.
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	ran, errRan := os.Stat(exe)
	given, errGiven := os.Stat(cowwebBinary)
	if errRan != nil || errGiven != nil || filepath.Base(exe) != "cowweb" || ran.Size() != given.Size() {
		t.Errorf("pod %s runs %s, want the lab's cowweb %s", pod.Name, exe, cowwebBinary)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	id := fmt.Sprint(uid)
	for key, want := range map[string]string{"Uid": strings.Repeat(id+" ", 3) + id, "Gid": strings.Repeat(id+" ", 3) + id,
		"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "NoNewPrivs": "1"} {
		if fields[key] != want {
			t.Errorf("pod %s process %d: %s %q, want %q", pod.Name, pid, key, fields[key], want)
		}
	}
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	var home string
	for _, kv := range strings.Split(string(environ), "\x00") {
		if v, ok := strings.CutPrefix(kv, "HOME="); ok {
			home = v
		}
	}
	info, err := os.Stat(home)
	if err != nil {
		t.Fatalf("pod %s home %q: %v", pod.Name, home, err)
	}
	if st := info.Sys().(*syscall.Stat_t); int(st.Uid) != uid || info.Mode().Perm() != 0o700 {
		t.Errorf("pod %s home %s: owner %d mode %v", pod.Name, home, st.Uid, info.Mode().Perm())
	}
}
