package calibrate

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab"
)

// As a user holding only deploy/rbac/calibrate.yaml's roles, calibrate measures and leaves the namespace made for it
// empty; as a user who may read the cluster but not install the probe, it fails saying so and leaves nothing.
func TestCalibrationWithLeastPrivilegeAndWithout(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	dir := t.TempDir()
	l, err := lab.Up(ctx, lab.Options{Dir: filepath.Join(dir, "lab"), Nodes: 1, Cowweb: []string{cowwebBinary}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Down()
	if _, err := l.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DefaultNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	for _, tc := range []struct {
		user    string
		roles   []string // of deploy/rbac/calibrate.yaml
		wantErr string
	}{
		{"calibrator", []string{"rollout-lab-calibrate", "rollout-lab-calibrate-kube-proxy", "rollout-lab-calibrate-read"}, ""},
		{"reader", []string{"rollout-lab-calibrate-read", "rollout-lab-calibrate-kube-proxy"}, "install the probe Pods: "},
	} {
		t.Run(tc.user, func(t *testing.T) {
			kubeconfig := grant(t, l, tc.user, tc.roles, filepath.Join(dir, tc.user+".kubeconfig"))
			config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				t.Fatal(err)
			}
			client, err := kubernetes.NewForConfig(config)
			if err != nil {
				t.Fatal(err)
			}
			profile, err := Run(ctx, Config{Name: "lab", Client: client, Deletions: 1, Hold: 10 * time.Second, Logger: logger,
				Helm: func(ns string) (*action.Configuration, error) {
					return experiment.HelmConfiguration(kubeconfig, "", ns, logger)
				}})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatal(err)
			case tc.wantErr == "" && (profile.ServiceOut.All.Samples != 1 || profile.KubeProxy.Source != "ConfigMap kube-system/kube-proxy"):
				t.Errorf("profile %+v", profile)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "forbidden")):
				t.Errorf("got %v, want an error about %q naming what was forbidden", err, tc.wantErr)
			}
			t.Logf("calibrate as %s: %v", tc.user, err)
			assertNothingLeft(t, l.Client, DefaultNamespace)
		})
	}
}

// assertNothingLeft checks that no Pod, Service, Deployment or Helm record of calibrate's is in namespace.
func assertNothingLeft(t *testing.T, client kubernetes.Interface, namespace string) {
	t.Helper()
	ctx := context.Background()
	// Pods go after their grace period; the sentinel and the probes' are short.
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0, err
	})
	if err != nil {
		t.Errorf("Pods left in %s: %v", namespace, err)
	}
	services, err := client.CoreV1().Services(namespace).List(ctx, metav1.ListOptions{})
	if err != nil || len(services.Items) != 0 {
		t.Errorf("Services left: %d %v", len(services.Items), err)
	}
	deployments, err := client.AppsV1().Deployments(namespace).List(ctx, metav1.ListOptions{})
	if err != nil || len(deployments.Items) != 0 {
		t.Errorf("Deployments left: %d %v", len(deployments.Items), err)
	}
	secrets, err := client.CoreV1().Secrets(namespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm"})
	if err != nil || len(secrets.Items) != 0 {
		t.Errorf("Helm records left: %d %v", len(secrets.Items), err)
	}
}

// grant applies the named roles of deploy/rbac/calibrate.yaml, binds them to user and writes a kubeconfig whose
// requests impersonate that user.
func grant(t *testing.T, l *lab.Lab, user string, roles []string, file string) string {
	t.Helper()
	ctx := context.Background()
	data, err := os.ReadFile("../deploy/rbac/calibrate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, r := range roles {
		want[r] = true
	}
	testenv.BindRBAC(t, l.Client, "deploy/rbac/calibrate.yaml", data, "", user, func(name string) bool { return want[name] })
	// The authorizer learns new bindings a moment after they are made: wait until the user may list Nodes.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
		review := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user,
			ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "list", Resource: "nodes"}}}
		got, err := l.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
		return err == nil && got.Status.Allowed, err
	}); err != nil {
		t.Fatalf("%s may not list Nodes: %v", user, err)
	}
	return testenv.Impersonating(t, l.Kubeconfig, user, file)
}
