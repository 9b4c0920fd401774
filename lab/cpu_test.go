package lab

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/internal/wellknown"
	"github.com/rollout-lab/rollout-lab/lab/kubelet"
)

// On the real hierarchy: a node never gives its Pods more CPU than its capacity, a container never more than its
// limit, and the accounting shows both with cAdvisor's names.
func TestPodsGetTheirCPULimitsAndNodesTheirCapacity(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	l, err := Up(ctx, Options{Dir: t.TempDir(), Nodes: 1, NodeCPU: 500, Cowweb: []string{cowwebBinary}, Metrics: metrics,
		Images: map[string][]string{"lab/sh": {"/bin/sh"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Down()
	if l.Cgroups == nil {
		t.Fatalf("no cgroups: %s", l.CPU.Reason)
	}
	node, err := l.Client.CoreV1().Nodes().Get(ctx, kubelet.NodeName(1), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if cpu := node.Status.Allocatable[corev1.ResourceCPU]; cpu.MilliValue() != 500 {
		t.Errorf("node allocatable cpu %s, want 500m", cpu.String())
	}
	burner := func(name string, limit string) *appsv1.Deployment {
		d := cowwebDeployment(name, 1, 0, "graceful")
		c := &d.Spec.Template.Spec.Containers[0]
		c.Image, c.Command, c.Args, c.ReadinessProbe = "lab/sh", []string{"sh", "-c", "while :; do :; done"}, nil, nil
		if limit != "" {
			c.Resources.Limits = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(limit)}
		}
		d.Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](1)
		return d
	}
	for _, d := range []*appsv1.Deployment{burner("limited", "100m"), burner("unlimited", "")} {
		if _, err := l.Client.AppsV1().Deployments("default").Create(ctx, d, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, app := range []string{"limited", "unlimited"} {
		defer func() {
			if t.Failed() {
				pods, _ := l.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
				for _, p := range pods.Items {
					t.Logf("%s: %+v", p.Name, p.Status)
				}
			}
		}()
		testenv.Eventually(t, app+" Ready", 30*time.Second, func(ctx context.Context) (bool, error) {
			pods, err := readyPods(ctx, l, "default", app)
			return len(pods) == 1, err
		})
	}
	usage := func() (limited, unlimited, node, throttledLimited, throttledNode float64) {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		value := func(name string, match func(*dto.Metric) bool) float64 {
			for _, f := range families {
				if f.GetName() != name {
					continue
				}
				for _, m := range f.Metric {
					if match(m) {
						return m.GetCounter().GetValue()
					}
				}
			}
			return 0
		}
		podIs := func(prefix string) func(*dto.Metric) bool {
			return func(m *dto.Metric) bool {
				for _, l := range m.Label {
					if l.GetName() == "pod" && strings.HasPrefix(l.GetValue(), prefix+"-") {
						return true
					}
				}
				return false
			}
		}
		any := func(*dto.Metric) bool { return true }
		return value(wellknown.MetricContainerCPUUsage, podIs("limited")), value(wellknown.MetricContainerCPUUsage, podIs("unlimited")),
			value(wellknown.MetricNodeCPUUsage, any), value(wellknown.MetricContainerCFSThrottled, podIs("limited")), value(wellknown.MetricNodeCFSThrottled, any)
	}
	l0, u0, n0, tl0, tn0 := usage()
	start := time.Now()
	time.Sleep(4 * time.Second)
	l1, u1, n1, tl1, tn1 := usage()
	elapsed := time.Since(start).Seconds()
	limitedRate, unlimitedRate, nodeRate := (l1-l0)/elapsed, (u1-u0)/elapsed, (n1-n0)/elapsed
	t.Logf("CPU over %.1fs: limited %.3f, unlimited %.3f, node %.3f cores; throttled periods: limited %.0f, node %.0f",
		elapsed, limitedRate, unlimitedRate, nodeRate, tl1-tl0, tn1-tn0)
	if limitedRate > 0.13 || limitedRate < 0.05 {
		t.Errorf("a container limited to 100m used %.3f cores", limitedRate)
	}
	if nodeRate > 0.56 || nodeRate < 0.4 {
		t.Errorf("a node of 500m used %.3f cores", nodeRate)
	}
	if unlimitedRate > 0.46 {
		t.Errorf("the unlimited container used %.3f cores on a 500m node beside a busy 100m one", unlimitedRate)
	}
	if tl1-tl0 < 10 || tn1-tn0 < 10 {
		t.Errorf("throttled periods: limited %.0f, node %.0f; want both throttled", tl1-tl0, tn1-tn0)
	}
}
