package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/lab/owner"
)

// Ctrl-C on `runner lab up` leaves no process, network namespace, bridge or listening port behind.
func TestLabUpInterruptedLeavesNothing(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, []string{"lab", "up", "--dir", dir, "--nodes", "2"}, Streams{Out: &out, Err: &errOut})
	}()
	stopped := false
	t.Cleanup(func() {
		// Even when the test fails, the lab stops before the test binary exits.
		cancel()
		if !stopped {
			<-done
		}
	})

	var state lab.State
	err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		select {
		case code := <-done:
			stopped = true
			t.Fatalf("lab up exited %d: %s", code, errOut.String())
		default:
		}
		data, err := os.ReadFile(filepath.Join(dir, lab.StateFile))
		return err == nil && json.Unmarshal(data, &state) == nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	config, err := clientcmd.BuildConfigFromFlags("", state.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client := kubernetes.NewForConfigOrDie(config)
	labels := map[string]string{"app": "cowweb"}
	deploy := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "cowweb"}, Spec: appsv1.DeploymentSpec{
		Replicas: ptr.To[int32](2), Selector: &metav1.LabelSelector{MatchLabels: labels},
		Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "cowweb", Image: lab.CowwebImages[0] + ":v1.1.1", Command: []string{"./cowweb"}, Args: []string{"serve", "--port=8080"}}}}}}}
	if _, err := client.AppsV1().Deployments("default").Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		running := 0
		for _, p := range pods.Items {
			for _, c := range p.Status.ContainerStatuses {
				if c.State.Running != nil {
					running++
				}
			}
		}
		return err == nil && running == 2, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The lab's processes: those in its Pods' namespaces (other tests may run labs in other processes).
	var pids, nodePIDs []int
	namespaces, err := cni.Namespaces(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range namespaces {
		out, _ := exec.Command("ip", "netns", "pids", ns).Output()
		for _, field := range strings.Fields(string(out)) {
			pid, _ := strconv.Atoi(field)
			if strings.Contains(ns, "-n") { // a node's namespace: its kube-proxy
				nodePIDs = append(nodePIDs, pid)
			} else {
				pids = append(pids, pid)
			}
		}
	}
	if len(pids) != 2 {
		t.Fatalf("want 2 cowweb processes in the lab's namespaces %v, got %v", namespaces, pids)
	}
	if len(nodePIDs) < 2 {
		t.Fatalf("want a kube-proxy in each of the 2 nodes' namespaces %v, got processes %v", namespaces, nodePIDs)
	}

	// Every node runs its kube-proxy, healthy on the node's address as a cloud balancer asks it.
	if len(state.NodeAddresses) != 2 {
		t.Errorf("node addresses %v, want 2", state.NodeAddresses)
	}
	for name, addr := range state.NodeAddresses {
		resp, err := http.Get("http://" + net.JoinHostPort(addr, "10256") + "/healthz")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("kube-proxy of %s: %v %v", name, resp, err)
		} else {
			resp.Body.Close()
		}
	}

	cancel() // Ctrl-C
	select {
	case code := <-done:
		stopped = true
		if code != ExitOK {
			t.Errorf("lab up exited %d: %s", code, errOut.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("lab up did not stop")
	}
	for _, pid := range append(pids, nodePIDs...) {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("process %d left", pid)
		}
	}
	if left, err := cni.Namespaces(os.Getpid()); err != nil || len(left) > 0 {
		t.Errorf("network namespaces left: %v %v", left, err)
	}
	if _, err := net.InterfaceByName(cni.BridgeName(os.Getpid())); err == nil {
		t.Errorf("bridge %s left", cni.BridgeName(os.Getpid()))
	}
	if routes, err := exec.Command("ip", "route", "show").Output(); err != nil || strings.Contains(string(routes), cni.BridgeName(os.Getpid())) {
		t.Errorf("routes through the lab's bridge left: %v\n%s", err, routes)
	}
	if conn, err := net.DialTimeout("tcp", strings.TrimPrefix(state.Server, "https://"), time.Second); err == nil {
		conn.Close()
		t.Errorf("the apiserver's port %s still listens", state.Server)
	}
	if _, err := os.Stat(filepath.Join(dir, lab.StateFile)); !os.IsNotExist(err) {
		t.Errorf("state file left: %v", err)
	}
}

// A lab.json left by a crash names a PID that another process may have now: `lab down` must not signal it.
func TestLabDownLeavesAStaleLabsProcessAlone(t *testing.T) {
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Process.Kill()
	exited := make(chan struct{})
	go func() {
		other.Wait()
		close(exited)
	}()
	owner, err := owner.Of(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	owner.Start-- // the lab that wrote the file started earlier: same PID, another process
	dir := t.TempDir()
	data, _ := json.Marshal(lab.State{PID: owner.PID, Owner: owner, Kubeconfig: filepath.Join(dir, "kubeconfig")})
	if err := os.WriteFile(filepath.Join(dir, lab.StateFile), data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "lab", "down", "--dir", dir)
	if code != 0 {
		t.Fatalf("lab down: %d %s", code, stderr)
	}
	if !strings.Contains(stdout, "no longer running") {
		t.Errorf("lab down said %q", stdout)
	}
	select {
	case <-exited:
		t.Fatal("lab down signalled a process that is not the lab")
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := os.Stat(filepath.Join(dir, lab.StateFile)); !os.IsNotExist(err) {
		t.Errorf("the stale lab.json stays: %v", err)
	}
}

// The lab's cowweb Pods run the small cowweb binary beside the runner when there is one, else the runner itself.
func TestCowwebPodsRunTheBinaryBesideTheRunner(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "runner")
	if err := os.WriteFile(self, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	if got := cowwebCommand(self, logger); len(got) != 2 || got[0] != self || got[1] != CowwebSubcommand || !strings.Contains(logs.String(), "no cowweb binary beside the runner") {
		t.Errorf("without a cowweb binary: %v, logged %q", got, logs.String())
	}
	standalone := filepath.Join(dir, "cowweb")
	if err := os.WriteFile(standalone, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := cowwebCommand(self, logger); got[0] != self {
		t.Errorf("a cowweb file that is not executable was taken: %v", got)
	}
	if err := os.Chmod(standalone, 0o755); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	if got := cowwebCommand(self, logger); len(got) != 1 || got[0] != standalone || logs.Len() != 0 {
		t.Errorf("with bin/cowweb beside the runner: %v, logged %q", got, logs.String())
	}
}
