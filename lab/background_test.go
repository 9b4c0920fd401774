package lab

import (
	"context"
	"os/exec"
	"regexp"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/internal/wellknown"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
)

// A lab with a background is a cluster of that size to every node's kube-proxy: each node's rules hold a chain for
// every background Service, and the kube-proxy ConfigMap says how the nodes' kube-proxies are configured, as
// kubeadm publishes it.
func TestBackgroundServicesAreProgrammedOnEveryNode(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	proxy := kubeproxy.Config{Mode: kubeproxy.ModeNFTables, MinSyncPeriod: 2 * time.Second, SyncPeriod: 45 * time.Second}
	const services, endpoints = 300, 2
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 2, Cowweb: []string{cowwebBinary}, KubeProxy: proxy,
		Background: Background{Services: services, EndpointsPerService: endpoints}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Down(); err != nil {
			t.Error(err)
		}
	}()
	t.Logf("%d background Services made in %s", services, l.BackgroundTook)
	slices, err := l.Client.DiscoveryV1().EndpointSlices(BackgroundNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(slices.Items) != services || len(slices.Items[0].Endpoints) != endpoints {
		t.Fatalf("%d slices (first with %d endpoints), want %d with %d", len(slices.Items), len(slices.Items[0].Endpoints), services, endpoints)
	}
	serviceChain := regexp.MustCompile(`(?m)^\s*chain service-\S+-` + BackgroundNamespace + `/bg-\d+/tcp/http \{`)
	for _, n := range l.Proxies.Nodes() {
		ns, _ := l.Network.NodeNamespace(n.Name)
		testenv.Eventually(t, n.Name+" programs every background Service", 30*time.Second, func(context.Context) (bool, error) {
			out, err := exec.Command("ip", "netns", "exec", ns, "nft", "list", "ruleset").Output()
			if err != nil {
				return false, err
			}
			got := len(serviceChain.FindAll(out, -1))
			t.Logf("%s: %d background Service chains", n.Name, got)
			return got == services, nil
		})
	}
	cm, err := l.Client.CoreV1().ConfigMaps(wellknown.KubeProxyConfigMapNamespace).Get(ctx, wellknown.KubeProxyConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found, err := kubeproxy.ParseConfiguration([]byte(cm.Data[wellknown.KubeProxyConfigMapKey]))
	if err != nil {
		t.Fatal(err)
	}
	if found.Config != proxy || len(found.Defaulted) != 0 {
		t.Errorf("the ConfigMap says %+v (defaulted %v), the nodes run %+v", found.Config, found.Defaulted, proxy)
	}
}
