package cli

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/controlplane"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// someNodePort picks a port of Kubernetes' node port range; the lab's apiserver holds no other NodePort Service at
// this point, so nothing else can have it.
func someNodePort() int { return 30000 + rand.IntN(2768) }

func TestApplyRefusesAClusterWithoutANamedContext(t *testing.T) {
	dir := t.TempDir()
	planFile := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(planFile, []byte("name: cluster\ntarget: {kind: kubernetes}\nload: {rate: 1, duration: 1s, url: 'http://127.0.0.1:1'}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, "apply", planFile, "--results", filepath.Join(dir, "results"))
	if code != ExitError || !strings.Contains(errOut, "no kubeconfig context given") || !strings.Contains(errOut, "never uses the current context") {
		t.Errorf("exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "results")); !os.IsNotExist(err) {
		t.Errorf("a results directory was made before the refusal: %v", err)
	}
	// No terminal to ask on and no --yes: refused before the cluster is even contacted.
	code, _, errOut = run(t, "apply", planFile, "--context", "somewhere", "--kubeconfig", filepath.Join(dir, "missing-kubeconfig"),
		"--results", filepath.Join(dir, "results"))
	if code != ExitError || !strings.Contains(errOut, "no terminal to ask on: pass --yes") {
		t.Errorf("without a terminal and --yes: exit %d: %s", code, errOut)
	}
	code, _, errOut = run(t, "apply", "../../plans/quick.yaml", "--context", "x")
	if code != ExitError || !strings.Contains(errOut, "--context is for a cluster") {
		t.Errorf("--context on a lab plan: exit %d: %s", code, errOut)
	}
}

func TestConfirmTakesOnlyYes(t *testing.T) {
	for answer, want := range map[string]bool{"y\n": true, "YES\n": true, "\n": false, "n\n": false, "yes please\n": false} {
		var out bytes.Buffer
		got, err := confirm(strings.NewReader(answer), &out)
		if err != nil || got != want || out.String() != "Proceed? [y/N] " {
			t.Errorf("%q: %v %v %q", answer, got, err, out.String())
		}
	}
	if _, err := confirm(strings.NewReader(""), &bytes.Buffer{}); err == nil {
		t.Error("no answer at all is not a yes")
	}
}

// The kubernetes target against a real apiserver — the lab's, through the kubeconfig it writes — with the load sent
// to the Service's node port as a user would send it to a cluster: the same steps, a timeline from watches. As an
// admin the runner creates the namespace and removes it; as a user holding only deploy/rbac/runner.yaml's Role (the
// requests impersonate it) it works in a namespace made for it and leaves the namespace.
func TestApplyOnAClusterThroughTheLabsAPIServer(t *testing.T) {
	testenv.RequireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dir := t.TempDir()
	// The runner's image is this binary, which plays `runner worker` (TestMain).
	cluster, err := lab.Up(ctx, lab.Options{Dir: filepath.Join(dir, "lab"), Nodes: 2, Cowweb: []string{self, CowwebSubcommand},
		Images: map[string][]string{experiment.RunnerImage: {self}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Down()
	for _, tc := range []struct {
		name, namespace string
		leastPrivilege  bool
		workers         int
	}{
		{"admin", "rollout-admin", false, 0},
		{"least-privilege", "rollout-rbac", true, 0},
		// In-cluster load: a Job of 2 `runner worker` Pods sending to the node's address and node port, scraped by the
		// embedded Prometheus at their Pod addresses.
		{"in-cluster", "rollout-job", false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kubeconfig := cluster.Kubeconfig
			if tc.leastPrivilege {
				kubeconfig = grantRunnerRole(t, cluster, tc.namespace, filepath.Join(dir, tc.name+".kubeconfig"))
			}
			applyOnCluster(t, cluster, kubeconfig, tc.namespace, filepath.Join(dir, tc.name), tc.workers)
			jobs, err := cluster.Client.BatchV1().Jobs(tc.namespace).List(ctx, metav1.ListOptions{})
			if err != nil || len(jobs.Items) != 0 {
				t.Errorf("load Jobs left: %v %v", jobs, err)
			}
			_, err = cluster.Client.CoreV1().Namespaces().Get(ctx, tc.namespace, metav1.GetOptions{})
			if tc.leastPrivilege && err != nil {
				t.Errorf("the namespace made for the runner is gone: %v", err)
			}
			if !tc.leastPrivilege {
				err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
					_, err := cluster.Client.CoreV1().Namespaces().Get(ctx, tc.namespace, metav1.GetOptions{})
					return apierrors.IsNotFound(err), nil
				})
				if err != nil {
					t.Errorf("the namespace the runner created is left: %v", err)
				}
			}
			secrets, err := cluster.Client.CoreV1().Secrets(tc.namespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm"})
			if err != nil || len(secrets.Items) != 0 {
				t.Errorf("Helm release records left: %v %v", secrets, err)
			}
			deployments, err := cluster.Client.AppsV1().Deployments(tc.namespace).List(ctx, metav1.ListOptions{})
			if err != nil || len(deployments.Items) != 0 {
				t.Errorf("Deployments left: %v %v", deployments, err)
			}
		})
	}
}

// grantRunnerRole makes the namespace, applies deploy/rbac/runner.yaml, binds its roles to a user, and writes a
// kubeconfig whose requests impersonate that user.
func grantRunnerRole(t *testing.T, cluster *lab.Lab, namespace, file string) string {
	t.Helper()
	ctx := context.Background()
	const user = "rollout-lab-runner-test"
	if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("../../deploy/rbac/runner.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// As the file's comment tells users: the ClusterRole names the plan's namespace.
	const placeholder = "    resourceNames: [quick]\n"
	if strings.Count(string(data), placeholder) != 1 {
		t.Fatalf("deploy/rbac/runner.yaml: the ClusterRole's %q line the README's sed edits is not there once", placeholder)
	}
	data = []byte(strings.Replace(string(data), placeholder, "    resourceNames: ["+namespace+"]\n", 1))
	testenv.BindRBAC(t, cluster.Client, "deploy/rbac/runner.yaml", data, namespace, user, func(string) bool { return true })
	file = testenv.Impersonating(t, cluster.Kubeconfig, user, file)
	// Without the Role the same user may do nothing there: the grant is what lets the run pass.
	review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user,
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "default", Verb: "create", Group: "apps", Resource: "deployments"}}}
	got, err := cluster.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
	if err != nil || got.Status.Allowed {
		t.Fatalf("the runner's user may create Deployments outside its namespace: %v %v", got.Status, err)
	}
	// The namespace ClusterRole reaches the plan's namespace only. The authorizer learns new bindings from its
	// informers a moment after they are created: the allowed answer is awaited first, then the refusals checked.
	mayDelete := func(target string) (bool, error) {
		review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "delete", Resource: "namespaces", Name: target}}}
		got, err := cluster.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.Allowed, nil
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return mayDelete(namespace)
	}); err != nil {
		t.Errorf("the runner's user may not delete its own namespace %s: %v", namespace, err)
	}
	for _, target := range []string{"kube-system", "default"} {
		if allowed, err := mayDelete(target); err != nil || allowed {
			t.Errorf("the runner's user may delete namespace %s: %v (%v)", target, allowed, err)
		}
	}
	return file
}

func applyOnCluster(t *testing.T, cluster *lab.Lab, kubeconfig, namespace, dir string, workers int) {
	t.Helper()
	nodePort := someNodePort()
	// A node's address, as a user of a cluster takes one from `kubectl get nodes -o wide`: the host reaches it over the
	// lab's node network, and so do Pods, through their node.
	address, from := cluster.Proxies.Nodes()[0].IP.String(), "this process"
	if workers > 0 {
		from = fmt.Sprintf("a Job of %d worker Pods", workers)
	}
	planText := fmt.Sprintf(`
name: on-cluster
target: {kind: kubernetes, namespace: %s}
app:
  replicas: 2
  load: 50
  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}
  terminationGracePeriod: 10s
  preStop: {sleep: 2s}
  values: {service: {type: NodePort, nodePort: %d}}
load: {rate: 20, duration: 10s, timeout: 5s, url: 'http://%s:%d', inCluster: {pods: %d}}
rollout: {at: 2s, timeout: 60s}
report: {lang: en}
`, namespace, nodePort, address, nodePort, workers)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	planFile := filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(planFile, []byte(planText), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := run(t, "apply", planFile, "--kubeconfig", kubeconfig, "--context", "rollout-lab", "--yes",
		"--results", filepath.Join(dir, "results"))
	if code != ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"About to run plan on-cluster on a Kubernetes cluster", "context     rollout-lab (cluster rollout-lab, server https://127.0.0.1:",
		"Kubernetes " + controlplane.KubernetesVersion, "namespace   " + namespace, "200 requests in all, up to 20/s, from " + from + " to http://" + address} {
		if !strings.Contains(errOut, want) {
			t.Errorf("the description lacks %q:\n%s", want, errOut)
		}
	}
	resultsDir := onlyDir(t, filepath.Join(dir, "results", "on-cluster", "*"))
	m, err := rundir.Load(resultsDir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Partial || len(m.Runs) != 1 || m.Runs[0].Summary.Completed != 200 || m.Provenance.Target["kind"] != "kubernetes" ||
		m.Provenance.Target["context"] != "rollout-lab" || m.Provenance.Target["kubernetes"] != controlplane.KubernetesVersion {
		t.Fatalf("run.json: partial %v, runs %+v, target %v", m.Partial, m.Runs, m.Provenance.Target)
	}
	t.Logf("outcomes through the node port: %v", m.Runs[0].Summary.ByClass)
	count := eventCounts(t, resultsDir, "default")
	// From watches only: no node agent on a cluster (no preStop, SIGTERM or service-out rows).
	if count[timeline.EventDeletionSeen] != 2 || count[timeline.EventEndpointNotReady] != 2 || count[timeline.EventContainerExited] != 2 ||
		count[timeline.EventPodCreated] != 2 || count[timeline.EventPodReady] != 2 || count[timeline.EventSIGTERM] != 0 || count[timeline.EventServiceOut] != 0 {
		t.Errorf("timeline from watches: %v", count)
	}
}
