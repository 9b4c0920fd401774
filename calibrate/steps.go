package calibrate

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/rollout-lab/rollout-lab/charts"
	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/internal/wellknown"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/plan"
)

// probe is a probe Pod and the NodePort Service that selects it and the sentinel.
type probe struct {
	pod      string
	service  string
	nodePort int
}

// Labels of the calibration's objects.
const (
	probeLabelPrefix = "calibrate.rollout-lab.io/probe-"
	sentinelName     = "sentinel"
	// sentinelPort is where the sentinel's "http" port points: nothing listens there, so its connections are refused.
	sentinelPort = 9
)

func (c *calibration) steps() []experiment.Step {
	client := c.cfg.Client
	ns := c.cfg.Namespace
	background := context.Background
	return []experiment.Step{
		{Name: "read the cluster", Do: c.readCluster},
		{Name: "create the namespace " + ns, Do: func(ctx context.Context) error {
			var err error
			c.createdNamespace, err = experiment.EnsureNamespace(ctx, client, ns)
			return err
		}, Cleanup: func() error {
			if !c.createdNamespace {
				return nil
			}
			if err := client.CoreV1().Namespaces().Delete(background(), ns, metav1.DeleteOptions{}); err != nil {
				return err
			}
			// Gone, not terminating, when calibrate returns: nothing of it is left behind.
			return wait.PollUntilContextTimeout(background(), 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
				_, err := client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
				return apierrors.IsNotFound(err), nil
			})
		}},
		{Name: "install the probe Pods", Do: c.installProbes, Cleanup: func() error {
			helm, err := c.cfg.Helm(ns)
			if err != nil {
				return err
			}
			return experiment.UninstallOwnRelease(helm, ns, c.cfg.Logger)
		}},
		{Name: "start the sentinel Pod", Do: c.startSentinel, Cleanup: func() error {
			err := client.CoreV1().Pods(ns).Delete(background(), sentinelName, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			if apierrors.IsNotFound(err) {
				return nil
			}
			return err
		}},
		{Name: "give each probe a NodePort Service", Do: c.exposeProbes, Cleanup: func() error {
			var errs []string
			for _, p := range c.probes {
				if err := client.CoreV1().Services(ns).Delete(background(), p.service, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
					errs = append(errs, err.Error())
				}
			}
			if len(errs) > 0 {
				return fmt.Errorf("%s", strings.Join(errs, "; "))
			}
			return nil
		}},
		{Name: "delete the probes one at a time", Do: c.measure},
		{Name: "read kube-proxy's programming latency", Do: c.readProgramming},
	}
}

// readCluster reads the nodes, the Services and endpoints every kube-proxy programs, and kube-proxy's
// configuration, before anything is installed.
func (c *calibration) readCluster(ctx context.Context) error {
	client := c.cfg.Client
	var err error
	if c.nodes, c.profile.Cluster.Version, err = nodesOf(ctx, client, c.cfg.AddressType); err != nil {
		return err
	}
	c.profile.Cluster.Nodes = len(c.nodes)
	services, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("count the cluster's Services: %w", err)
	}
	slices, err := client.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("count the cluster's endpoints: %w", err)
	}
	c.profile.Cluster.Services = len(services.Items)
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				c.profile.Cluster.Endpoints++
			}
		}
	}
	c.profile.KubeProxy = readKubeProxy(ctx, c)
	return nil
}

// readKubeProxy reads the cluster's kube-proxy configuration where kubeadm publishes it; without it, kube-proxy's
// defaults are taken and the source says why.
func readKubeProxy(ctx context.Context, c *calibration) plan.FoundKubeProxy {
	where := fmt.Sprintf("ConfigMap %s/%s", wellknown.KubeProxyConfigMapNamespace, wellknown.KubeProxyConfigMapName)
	defaults := kubeproxy.Defaulted
	found := func(k kubeproxy.Config, source string) plan.FoundKubeProxy {
		return plan.FoundKubeProxy{Mode: k.Mode, MinSyncPeriod: plan.Duration(k.MinSyncPeriod), SyncPeriod: plan.Duration(k.SyncPeriod), Source: source}
	}
	cm, err := c.cfg.Client.CoreV1().ConfigMaps(wellknown.KubeProxyConfigMapNamespace).Get(ctx, wellknown.KubeProxyConfigMapName, metav1.GetOptions{})
	if err != nil {
		c.cfg.Logger.Warn("kube-proxy's configuration not readable: taking kube-proxy's defaults", "where", where, "err", err)
		return found(defaults, fmt.Sprintf("kube-proxy v1.37's defaults: %s not readable (%s)", where, apierrors.ReasonForError(err)))
	}
	parsed, err := kubeproxy.ParseConfiguration([]byte(cm.Data[wellknown.KubeProxyConfigMapKey]))
	if err != nil {
		c.cfg.Logger.Warn("kube-proxy's configuration not understood: taking kube-proxy's defaults", "where", where, "err", err)
		return found(defaults, fmt.Sprintf("kube-proxy v1.37's defaults: %s key %s not understood", where, wellknown.KubeProxyConfigMapKey))
	}
	source := where
	if len(parsed.Defaulted) > 0 {
		source += fmt.Sprintf(" (kube-proxy's defaults for %s)", strings.Join(parsed.Defaulted, ", "))
	}
	// "minSyncPeriod: 0s" is what kubeadm wrote for years; kube-proxy from 1.19 on runs it as 1 s.
	if parsed.MinSyncPeriod == 0 {
		if d, ok := kubeproxy.ZeroMinSyncPeriod(c.profile.Cluster.Version); ok && d > 0 {
			parsed.MinSyncPeriod = d
			source += fmt.Sprintf("; minSyncPeriod 0s, which kube-proxy %s runs as %s", c.profile.Cluster.Version, d)
		}
	}
	return found(parsed.Config, source)
}

// probeApp is the chart's app as a probe: a deleted probe keeps serving for Hold (preStop sleep) and is killed
// soon after; Ready within seconds.
func (c *calibration) probeApp() (plan.App, error) {
	grace := c.cfg.Hold + 10*time.Second
	text := fmt.Sprintf("name: probe\nload: {rate: 1, duration: 1s}\napp:\n  replicas: %d\n  slow: false\n  preStop: {sleep: %s}\n  terminationGracePeriod: %s\n"+
		"  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}\n", c.cfg.Deletions, c.cfg.Hold, grace.Round(time.Second))
	p, err := plan.Parse("calibration probe", []byte(text))
	if err != nil {
		return plan.App{}, err
	}
	app := p.Cases[0].App
	if c.cfg.Image.Repository != "" {
		app.Image = c.cfg.Image
	}
	// Only the probes' own NodePort Services are wanted: no cloud load balancer for the chart's.
	app.Values = map[string]any{"service": map[string]any{"type": "ClusterIP"}}
	return app, nil
}

func (c *calibration) installProbes(ctx context.Context) error {
	app, err := c.probeApp()
	if err != nil {
		return err
	}
	helm, err := c.cfg.Helm(c.cfg.Namespace)
	if err != nil {
		return err
	}
	if _, err := experiment.InstallCowweb(ctx, helm, c.cfg.Namespace, charts.CowwebValues(app)); err != nil {
		// A failed install may have made some of its objects: the step's cleanup runs only after success.
		if undoErr := experiment.UninstallOwnRelease(helm, c.cfg.Namespace, c.cfg.Logger); undoErr != nil {
			c.cfg.Logger.Warn("remove the failed probe release", "err", undoErr)
		}
		return err
	}
	pods, err := c.probePods(ctx)
	if err != nil {
		return err
	}
	for i, pod := range pods[:c.cfg.Deletions] {
		label := fmt.Sprintf(`{"metadata":{"labels":{"%s%d":"yes"}}}`, probeLabelPrefix, i)
		if _, err := c.cfg.Client.CoreV1().Pods(c.cfg.Namespace).Patch(ctx, pod.Name, types.StrategicMergePatchType, []byte(label), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("label probe Pod %s: %w", pod.Name, err)
		}
		c.probes = append(c.probes, probe{pod: pod.Name, service: fmt.Sprintf("probe-%d", i)})
	}
	return nil
}

// probePods are the chart's Ready Pods, by name.
func (c *calibration) probePods(ctx context.Context) ([]corev1.Pod, error) {
	list, err := c.cfg.Client.CoreV1().Pods(c.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + experiment.ReleaseName})
	if err != nil {
		return nil, err
	}
	var ready []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && p.Status.PodIP != "" {
			ready = append(ready, p)
		}
	}
	if len(ready) < c.cfg.Deletions {
		return nil, fmt.Errorf("%d probe Pods running, want %d", len(ready), c.cfg.Deletions)
	}
	return ready, nil
}

// startSentinel runs a copy of a probe Pod whose "http" port points where nothing listens: Ready (its probes ask
// the app's own port), selected by every probe's Service, refusing every connection sent to it.
func (c *calibration) startSentinel(ctx context.Context) error {
	pods, err := c.probePods(ctx)
	if err != nil {
		return err
	}
	spec := *pods[0].Spec.DeepCopy()
	spec.NodeName = "" // scheduled like any Pod
	container := &spec.Containers[0]
	container.Lifecycle = nil
	appPort := intstr.FromInt32(container.Ports[0].ContainerPort)
	container.Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: sentinelPort, Protocol: corev1.ProtocolTCP}}
	for _, pr := range []*corev1.Probe{container.ReadinessProbe, container.LivenessProbe, container.StartupProbe} {
		if pr != nil && pr.HTTPGet != nil {
			pr.HTTPGet.Port = appPort
		}
	}
	labels := map[string]string{}
	for i := range c.cfg.Deletions {
		labels[fmt.Sprintf("%s%d", probeLabelPrefix, i)] = "yes"
	}
	sentinel := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: sentinelName, Namespace: c.cfg.Namespace, Labels: labels}, Spec: spec}
	if _, err := c.cfg.Client.CoreV1().Pods(c.cfg.Namespace).Create(ctx, sentinel, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create the sentinel Pod: %w", err)
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.cfg.Client.CoreV1().Pods(c.cfg.Namespace).Get(ctx, sentinelName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	})
}

// exposeProbes gives each probe a NodePort Service selecting it and the sentinel.
func (c *calibration) exposeProbes(ctx context.Context) error {
	for i := range c.probes {
		p := &c.probes[i]
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: p.service, Namespace: c.cfg.Namespace},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{fmt.Sprintf("%s%d", probeLabelPrefix, i): "yes"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}}}
		created, err := c.cfg.Client.CoreV1().Services(c.cfg.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create Service %s: %w", p.service, err)
		}
		p.nodePort = int(created.Spec.Ports[0].NodePort)
	}
	return nil
}
