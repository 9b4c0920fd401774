package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/component-base/version"
	"k8s.io/utils/ptr"
)

func readyNode(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

// markReady sets the Node Ready and lifts the not-ready taint the admission put on it, as a kubelet and the
// node lifecycle controller would.
func markReady(ctx context.Context, c kubernetes.Interface, name string) error {
	node, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	node.Spec.Taints = nil
	if node, err = c.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err != nil {
		return err
	}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now(), Reason: "Test"}}
	node.Status.Allocatable = corev1.ResourceList{corev1.ResourcePods: resource.MustParse("110")}
	node.Status.Capacity = node.Status.Allocatable
	_, err = c.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func TestControlPlaneRunsDeploymentsAndServicesAndRestarts(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	cp, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane up in %v", time.Since(start))
	defer cp.Stop()

	if _, err := Start(ctx, Options{Dir: t.TempDir()}); !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second lab in the process: %v", err)
	}
	info, err := os.Stat(cp.Kubeconfig)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig %v mode %v", err, info.Mode())
	}
	etcdRefusesClientsWithoutItsCertificate(t, cp)
	version, err := cp.Client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if version.GitVersion != KubernetesVersion {
		t.Errorf("apiserver reports %s, want %s (built without make's -ldflags?)", version.GitVersion, KubernetesVersion)
	}

	c := cp.Client
	if _, err := c.CoreV1().Nodes().Create(ctx, readyNode("lab-node-1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := markReady(ctx, c, "lab-node-1"); err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cp-test"}}
	if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "web"}
	deploy := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "cp-test"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "example/web:1", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
			},
		},
	}
	if _, err := c.AppsV1().Deployments("cp-test").Create(ctx, deploy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "cp-test"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromString("http")}}}}
	if _, err := c.CoreV1().Services("cp-test").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The deployment and replicaset controllers create the Pods; the scheduler binds them to the Node.
	testenv.Eventually(t, "2 Pods scheduled", 30*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := c.CoreV1().Pods("cp-test").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		scheduled := 0
		for _, p := range pods.Items {
			if p.Spec.NodeName == "lab-node-1" {
				scheduled++
			}
		}
		return scheduled == 2, nil
	})
	// The endpointslice controller makes the Service's slice.
	testenv.Eventually(t, "EndpointSlice of the Service", 30*time.Second, func(ctx context.Context) (bool, error) {
		slices, err := c.DiscoveryV1().EndpointSlices("cp-test").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		return err == nil && len(slices.Items) == 1, err
	})
	// The serviceaccount controller gives the namespace its default ServiceAccount.
	testenv.Eventually(t, "default ServiceAccount", 30*time.Second, func(ctx context.Context) (bool, error) {
		_, err := c.CoreV1().ServiceAccounts("cp-test").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})

	stopStart := time.Now()
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(stopStart))
	if _, err := cp.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err == nil {
		t.Error("the apiserver still answers after Stop")
	}

	// A second lab in the same process, after the first stopped.
	again, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Stop()
	if _, err := again.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Error(err)
	}
}

// etcd answers only TLS clients with a certificate from its own CA: not plain HTTP, not a client without a
// certificate, not the admin's kubeconfig certificate (lab CA); the apiserver's etcd client certificate works.
func etcdRefusesClientsWithoutItsCertificate(t *testing.T, cp *ControlPlane) {
	t.Helper()
	if !strings.HasPrefix(cp.EtcdURL, "https://127.0.0.1:") {
		t.Fatalf("etcd listens at %s, want https on loopback", cp.EtcdURL)
	}
	caPEM, err := os.ReadFile(cp.pki.EtcdCAFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	get := func(scheme string, certFile, keyFile string) error {
		tlsConfig := &tls.Config{RootCAs: roots}
		if certFile != "" {
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				t.Fatal(err)
			}
			tlsConfig.Certificates = []tls.Certificate{cert}
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
		resp, err := client.Get(scheme + strings.TrimPrefix(cp.EtcdURL, "https") + "/version")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode >= 300 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	if err := get("http", "", ""); err == nil {
		t.Error("etcd answered plain HTTP")
	}
	if err := get("https", "", ""); err == nil {
		t.Error("etcd answered a client without a certificate")
	}
	if err := get("https", cp.pki.AdminCertFile, cp.pki.AdminKeyFile); err == nil {
		t.Error("etcd answered the admin's certificate from the lab CA")
	}
	if err := get("https", cp.pki.APIServerEtcdCertFile, cp.pki.APIServerEtcdKeyFile); err != nil {
		t.Errorf("the apiserver's etcd client certificate: %v", err)
	}
}

// The version the apiserver reports (stamped into component-base by the Makefile) is the module's.
func TestStampedVersionIsTheModules(t *testing.T) {
	stamped := version.Get().GitVersion
	if !strings.HasPrefix(stamped, "v1.") {
		t.Skipf("component-base not stamped (%s): build with the Makefile's K8S_LDFLAGS", stamped)
	}
	if stamped != KubernetesVersion || !strings.HasPrefix(KubernetesVersion, "v1."+version.Get().Minor+".") {
		t.Errorf("stamped %s (minor %s), module %s", stamped, version.Get().Minor, KubernetesVersion)
	}
}
