// Package kubelet is the lab's node agent: it registers the lab's Nodes and runs the Pods bound to them as local
// processes, each in its Pod network namespace, as its securityContext's user, in the cgroups the kubelet would
// make, with the kubelet's probes, lifecycle hooks and termination (preStop, SIGTERM, grace period, SIGKILL). What
// happens to each Pod is recorded in the timeline.
package kubelet

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"

	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Options configure the lab's node agent.
type Options struct {
	// Version is the Kubernetes release the Nodes report and the probes' User-Agent carries.
	Version string
	// Nodes is how many Nodes the agent registers and runs Pods for.
	Nodes int
	// Images maps an image (repository without tag, or the full reference) to the argv that replaces the
	// container's command[0] (or that is its entrypoint when it has no command).
	Images  map[string][]string
	Network cni.Network
	// StateDir holds container logs and events.jsonl.
	StateDir string
	// Metrics, when set, receive every recorded event.
	Metrics *timeline.Metrics
	Logger  *slog.Logger
	// NodeCPU is each Node's CPU capacity (and allocatable) in milli-CPU; 0: unaccounted (64 CPUs reported).
	NodeCPU int64
	// Cgroups, when set, holds each node's, Pod's and container's cgroup (see lab/cgroups).
	Cgroups *cgroups.Cgroups
}

// Agent is the lab's kubelet: it registers Nodes and runs the Pods bound to them as local processes.
type Agent struct {
	opts     Options
	client   kubernetes.Interface
	Nodes    []string
	Events   *timeline.Recorder
	logger   *slog.Logger
	ctx      context.Context
	cancel   context.CancelFunc
	mu       sync.Mutex
	pods     map[types.UID]*podWorker
	wg       sync.WaitGroup
	factory  informers.SharedInformerFactory
	stopOnce sync.Once
	files    *podFiles
	setpriv  string // util-linux's setpriv: how Pod processes become their user
}

// NodeName is the name of the lab's i-th Node (from 1).
func NodeName(i int) string { return fmt.Sprintf("lab-node-%d", i) }

// Start registers the Nodes and starts running their Pods.
func Start(ctx context.Context, client kubernetes.Interface, opts Options) (*Agent, error) {
	if opts.Nodes < 1 {
		opts.Nodes = 1
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(opts.StateDir, "logs"), 0o755); err != nil {
		return nil, err
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return nil, fmt.Errorf("the lab runs Pods as their securityContext's user with setpriv (Debian package util-linux): %w", err)
	}
	files, err := newPodFiles()
	if err != nil {
		return nil, err
	}
	events, err := timeline.NewRecorder(filepath.Join(opts.StateDir, "events.jsonl"), opts.Metrics)
	if err != nil {
		files.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a := &Agent{opts: opts, client: client, Events: events, logger: opts.Logger, ctx: runCtx, cancel: cancel, pods: map[types.UID]*podWorker{},
		files: files, setpriv: setpriv}
	for i := 1; i <= opts.Nodes; i++ {
		name := NodeName(i)
		err := a.registerNode(ctx, name)
		if err == nil && opts.Cgroups != nil {
			err = opts.Cgroups.AddNode(name, opts.NodeCPU)
		}
		if err != nil {
			cancel()
			events.Close()
			files.Close()
			return nil, err
		}
		a.Nodes = append(a.Nodes, name)
	}
	a.wg.Add(1)
	go a.heartbeat()
	a.factory = informers.NewSharedInformerFactory(client, 0)
	podInformer := a.factory.Core().V1().Pods().Informer()
	_, err = podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.sync(obj) },
		UpdateFunc: func(_, obj any) { a.sync(obj) },
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			if pod, ok := obj.(*corev1.Pod); ok {
				a.forget(pod.UID)
			}
		},
	})
	if err != nil {
		cancel()
		events.Close()
		files.Close()
		return nil, err
	}
	a.factory.Start(runCtx.Done())
	a.factory.WaitForCacheSync(runCtx.Done())
	return a, nil
}

func (a *Agent) ownsNode(name string) bool {
	for _, n := range a.Nodes {
		if n == name {
			return true
		}
	}
	return false
}

func (a *Agent) registerNode(ctx context.Context, name string) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "rollout-lab/node": "true"}}}
	_, err := a.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("register node %s: %w", name, err)
	}
	// The node's network comes from the Pod CIDR the controller-manager's node IPAM controller gives it, as a CNI
	// plugin on a cluster takes it from Node.spec.podCIDR.
	var podCIDR string
	err = wait.PollUntilContextTimeout(ctx, 20*time.Millisecond, podCIDRTimeout, true, func(ctx context.Context) (bool, error) {
		n, err := a.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		podCIDR = n.Spec.PodCIDR
		return podCIDR != "", nil
	})
	if err != nil {
		return fmt.Errorf("node %s got no Pod CIDR from the node IPAM controller in %s: %w", name, podCIDRTimeout, err)
	}
	if _, err := a.opts.Network.AddNode(name, podCIDR); err != nil {
		return err
	}
	// The admission taints a new Node not-ready; with no node lifecycle controller in the lab, the agent lifts it.
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := a.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var taints []corev1.Taint
		for _, t := range n.Spec.Taints {
			if t.Key != corev1.TaintNodeNotReady && t.Key != corev1.TaintNodeUnreachable {
				taints = append(taints, t)
			}
		}
		n.Spec.Taints = taints
		if n, err = a.client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			return err
		}
		a.setNodeStatus(n)
		_, err = a.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

// podCIDRTimeout bounds the wait for the node IPAM controller, which allocates as soon as it sees the Node.
const podCIDRTimeout = 30 * time.Second

func (a *Agent) setNodeStatus(n *corev1.Node) {
	now := metav1.Now()
	cpu := "64"
	if a.opts.NodeCPU > 0 {
		cpu = cgroups.FormatMilliCPU(a.opts.NodeCPU)
	}
	resources := corev1.ResourceList{corev1.ResourcePods: *resourceQuantity("250"), corev1.ResourceCPU: *resourceQuantity(cpu),
		corev1.ResourceMemory: *resourceQuantity("256Gi"), corev1.ResourceEphemeralStorage: *resourceQuantity("1Ti")}
	n.Status.Capacity, n.Status.Allocatable = resources, resources
	// No Hostname address: the apiserver would look the name up in DNS.
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: a.opts.Network.NodeIP(n.Name).String()}}
	n.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: a.opts.Version, OperatingSystem: "linux", Architecture: "amd64",
		ContainerRuntimeVersion: "rollout-lab://processes"}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "LabAgentReady",
		Message: "the rollout-lab node agent runs Pods as local processes", LastHeartbeatTime: now, LastTransitionTime: now}}
}

func (a *Agent) heartbeat() {
	defer a.wg.Done()
	ticker := time.NewTicker(10 * time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-ticker.C:
			for _, name := range a.Nodes {
				err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
					n, err := a.client.CoreV1().Nodes().Get(a.ctx, name, metav1.GetOptions{})
					if err != nil {
						return err
					}
					a.setNodeStatus(n)
					_, err = a.client.CoreV1().Nodes().UpdateStatus(a.ctx, n, metav1.UpdateOptions{})
					return err
				})
				if err != nil && a.ctx.Err() == nil {
					a.logger.Warn("node heartbeat", "node", name, "err", err)
				}
			}
		}
	}
}

func (a *Agent) sync(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok || !a.ownsNode(pod.Spec.NodeName) || a.ctx.Err() != nil {
		return
	}
	a.mu.Lock()
	w, ok := a.pods[pod.UID]
	if !ok {
		if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			a.mu.Unlock()
			return
		}
		w = newPodWorker(a, pod)
		a.pods[pod.UID] = w
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			w.run()
			a.mu.Lock()
			delete(a.pods, pod.UID)
			a.mu.Unlock()
		}()
	}
	a.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		w.requestTermination(pod)
	}
}

// forget handles a Pod removed from the API without the agent's help (a forced deletion): stop it at once.
func (a *Agent) forget(uid types.UID) {
	a.mu.Lock()
	w, ok := a.pods[uid]
	a.mu.Unlock()
	if ok {
		w.requestTermination(nil)
	}
}

// Stop kills every Pod's processes, removes their networks and stops the agent. The Pod objects stay.
func (a *Agent) Stop() {
	a.stopOnce.Do(func() {
		a.mu.Lock()
		workers := make([]*podWorker, 0, len(a.pods))
		for _, w := range a.pods {
			workers = append(workers, w)
		}
		a.mu.Unlock()
		for _, w := range workers {
			w.kill()
		}
		a.cancel()
		a.wg.Wait()
		a.factory.Shutdown()
		a.Events.Close()
		if err := a.files.Close(); err != nil {
			a.logger.Warn("pod directories", "err", err)
		}
	})
}

// resolveArgv maps a container to the local executable that plays its image.
func (a *Agent) resolveArgv(c corev1.Container) ([]string, error) {
	repo := c.Image
	if i := strings.IndexAny(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	prefix, ok := a.opts.Images[c.Image]
	if !ok {
		prefix, ok = a.opts.Images[repo]
	}
	if !ok {
		return nil, fmt.Errorf("image %s is not mapped to an executable in the lab (map it in the plan's lab.images)", c.Image)
	}
	argv := append([]string(nil), prefix...)
	if len(c.Command) > 1 {
		argv = append(argv, c.Command[1:]...)
	}
	return append(argv, c.Args...), nil
}

// podIPString is the Pod's address for the downward API.
func podIPString(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

func ptrTime(t time.Time) *metav1.Time { return ptr.To(metav1.NewTime(t)) }

// ContainerPID is the process id of a running container of a Pod this agent runs, as crictl inspect would tell.
func (a *Agent) ContainerPID(uid types.UID, container string) (int, bool) {
	a.mu.Lock()
	w := a.pods[uid]
	a.mu.Unlock()
	if w == nil {
		return 0, false
	}
	for _, c := range w.ctrs {
		if c.spec.Name != container || !c.running() {
			continue
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.cmd == nil || c.cmd.Process == nil {
			return 0, false
		}
		return c.cmd.Process.Pid, true
	}
	return 0, false
}
