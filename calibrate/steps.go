package calibrate

import (
	"context"
	"fmt"
	"net"
	"strconv"
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
		{Name: c.exposeStepName(), Do: c.exposeProbes, Cleanup: func() error {
			var errs []string
			// Through a load URL every probe has the one load Service: deleted once, then not found.
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
	if c.loadURL != nil {
		c.routes = []route{urlRoute(c.loadURL)}
		c.profile.ServiceOut.Via = fmt.Sprintf("the load URL %s (Service %s, type %s)", c.loadURL.Redacted(), LoadServiceName, c.cfg.LoadServiceType)
	} else {
		reachable, err := reachableNodes(c.nodes, c.cfg.AddressType)
		if err != nil {
			return err
		}
		c.routes = nodeRoutes(reachable, string(c.cfg.AddressType))
		c.profile.ServiceOut.Via = fmt.Sprintf("every node's NodePort (%s)", c.cfg.AddressType)
	}
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
		label := fmt.Sprintf(`{"metadata":{"labels":{"%s":"yes"}}}`, probeLabel(i))
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
		labels[probeLabel(i)] = "yes"
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

// LoadServiceName is the Service a load URL leads to (port 80): it selects the probe about to be deleted.
const LoadServiceName = "calibrate"

func (c *calibration) exposeStepName() string {
	if c.loadURL != nil {
		return fmt.Sprintf("create the load Service %s (%s)", LoadServiceName, c.cfg.LoadServiceType)
	}
	return "give each probe a NodePort Service"
}

// exposeProbes gives each probe a NodePort Service selecting it and the sentinel; through a load URL, one Service
// of the load Service type selects the first probe and the sentinel (pointLoadService moves it on).
func (c *calibration) exposeProbes(ctx context.Context) error {
	port := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}
	if c.loadURL != nil {
		spec := corev1.ServiceSpec{Type: c.cfg.LoadServiceType, Selector: map[string]string{probeLabel(0): "yes"}}
		switch c.cfg.LoadServiceType {
		case corev1.ServiceTypeNodePort:
			nodePort, _ := strconv.Atoi(c.loadURL.Port()) // ParseLoadURL checked it
			port.NodePort = int32(nodePort)
		case corev1.ServiceTypeLoadBalancer:
			// The URL's host as the address asked for (a cloud's reserved static address); a host name is the
			// cloud's or DNS's business.
			if ip := net.ParseIP(c.loadURL.Hostname()); ip != nil {
				spec.LoadBalancerIP = ip.String()
			}
		}
		spec.Ports = []corev1.ServicePort{port}
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: LoadServiceName, Namespace: c.cfg.Namespace}, Spec: spec}
		if _, err := c.cfg.Client.CoreV1().Services(c.cfg.Namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create the load Service %s: %w", LoadServiceName, err)
		}
		for i := range c.probes {
			c.probes[i].service = LoadServiceName
		}
		return nil
	}
	for i := range c.probes {
		p := &c.probes[i]
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: p.service, Namespace: c.cfg.Namespace},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, Selector: map[string]string{probeLabel(i): "yes"}, Ports: []corev1.ServicePort{port}}}
		created, err := c.cfg.Client.CoreV1().Services(c.cfg.Namespace).Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create Service %s: %w", p.service, err)
		}
		p.nodePort = int(created.Spec.Ports[0].NodePort)
	}
	return nil
}

// pointLoadService makes the load Service select probe i (and the sentinel, which carries every probe's label).
func (c *calibration) pointLoadService(ctx context.Context, i int) error {
	patch := fmt.Sprintf(`{"spec":{"selector":{"%s":"yes"%s}}}`, probeLabel(i), previousSelectorRemoval(i))
	if _, err := c.cfg.Client.CoreV1().Services(c.cfg.Namespace).Patch(ctx, LoadServiceName, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("point the load Service %s at probe %s: %w", LoadServiceName, c.probes[i].pod, err)
	}
	return nil
}

// previousSelectorRemoval is the patch's removal of the previous probe's label from the selector (a map merges).
func previousSelectorRemoval(i int) string {
	if i == 0 {
		return ""
	}
	return fmt.Sprintf(`,"%s":null`, probeLabel(i-1))
}

// probeLabel is the label that probe i and the sentinel carry.
func probeLabel(i int) string { return fmt.Sprintf("%s%d", probeLabelPrefix, i) }
