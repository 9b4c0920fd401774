package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/rollout-lab/rollout-lab/lab/cni"
	"github.com/rollout-lab/rollout-lab/lab/owner"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// State is what a running `runner lab up` leaves in its directory for `lab status` and `lab down`.
type State struct {
	PID int `json:"pid"`
	// Owner tells the lab's process from another that got its PID after a crash or reboot.
	Owner      owner.Owner `json:"owner"`
	Server     string      `json:"server"`
	Kubeconfig string      `json:"kubeconfig"`
	Nodes      int         `json:"nodes"`
	// NodeAddresses are the nodes' addresses on the lab's node network, which the host routes to: NodePorts answer
	// there, and each node's kube-proxy serves /healthz on :10256 and /metrics on :10249.
	NodeAddresses map[string]string `json:"nodeAddresses"`
	KubeProxy     string            `json:"kubeProxy"`
}

// StateFile is the state's file in the lab's directory.
const StateFile = "lab.json"

// WriteState records the running lab l of this process in dir; remove takes the record back.
func WriteState(dir string, l *Lab) (remove func(), err error) {
	me, err := owner.Self()
	if err != nil {
		return nil, err
	}
	state := State{PID: me.PID, Owner: me, Server: l.Server, Kubeconfig: l.Kubeconfig, Nodes: len(l.Proxies.Nodes()),
		NodeAddresses: map[string]string{}, KubeProxy: l.Proxies.Config().String()}
	for _, n := range l.Proxies.Nodes() {
		state.NodeAddresses[n.Name] = n.IP.String()
	}
	data, err := json.MarshalIndent(state, "", "  ")
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, StateFile)
	if err := rundir.WriteFileAtomic(file, data, 0o644); err != nil {
		return nil, err
	}
	return func() { os.Remove(file) }, nil
}

// ReadState reads the state a running lab left in dir.
func ReadState(dir string) (State, error) {
	var s State
	file := filepath.Join(dir, StateFile)
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return s, fmt.Errorf("no lab is running from %s (runner lab up --dir %s starts one)", dir, dir)
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("%s: %w", file, err)
	}
	if s.PID <= 0 {
		return s, fmt.Errorf("%s: no process id", file)
	}
	return s, nil
}

// Stop stops the lab running from dir (SIGTERM, then up to 30 s for it to go) and, as root, removes what labs of dead
// processes left (network namespaces, the processes in them, bridges). It says what it did on out.
func Stop(dir string, out io.Writer) error {
	state, err := ReadState(dir)
	switch {
	case err != nil:
	case !state.Owner.Alive():
		// The lab is gone (crash, reboot); its PID may belong to another process now: leave that alone.
		fmt.Fprintf(out, "the lab of %s is no longer running (process %d is not it): nothing to stop\n", filepath.Join(dir, StateFile), state.PID)
		if err := os.Remove(filepath.Join(dir, StateFile)); err != nil && !os.IsNotExist(err) {
			return err
		}
	default:
		if err := syscall.Kill(state.PID, syscall.SIGTERM); err == nil {
			for i := 0; i < 300 && state.Owner.Alive(); i++ {
				time.Sleep(100 * time.Millisecond)
			}
			fmt.Fprintf(out, "stopped the lab of process %d\n", state.PID)
		}
	}
	if os.Geteuid() != 0 {
		return nil
	}
	cleaned, err := cni.CleanStale()
	if !cleaned.Empty() {
		// Whatever was removed, the user learns it (a crashed run's leftovers go silently otherwise).
		fmt.Fprintf(out, "removed what dead labs left: %d network namespaces %v, %d processes in them, %d bridges %v\n",
			len(cleaned.Namespaces), cleaned.Namespaces, cleaned.Processes, len(cleaned.Links), cleaned.Links)
	}
	return err
}

// WriteStatus writes what the running lab holds: its server and kubeconfig, nodes with their addresses and Pod
// CIDRs, Pods, and the URLs of its load balancers and NodePorts.
func (s State) WriteStatus(ctx context.Context, out io.Writer) error {
	config, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "lab of process %d: %s\nkubeconfig: %s\n", s.PID, s.Server, s.Kubeconfig)
	nodeList, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, n := range nodeList.Items {
		fmt.Fprintf(out, "node %s %s Pod CIDR %s\n", n.Name, s.NodeAddresses[n.Name], n.Spec.PodCIDR)
	}
	if s.KubeProxy != "" {
		fmt.Fprintf(out, "every node runs %s (healthz :10256, metrics :10249)\n", s.KubeProxy)
	}
	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, p := range pods.Items {
		fmt.Fprintf(out, "pod %s/%s %s %s on %s\n", p.Namespace, p.Name, p.Status.Phase, p.Status.PodIP, p.Spec.NodeName)
	}
	services, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, svc := range services.Items {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			for _, p := range svc.Spec.Ports {
				fmt.Fprintf(out, "load balancer %s/%s:%d → %s\n", svc.Namespace, svc.Name, p.Port, ServiceURL(p.Name, int(p.Port), net.JoinHostPort(in.IP, fmt.Sprint(p.Port))))
			}
		}
	}
	addresses := make([]string, 0, len(s.NodeAddresses))
	for _, ip := range s.NodeAddresses {
		addresses = append(addresses, ip)
	}
	sort.Strings(addresses)
	for _, svc := range services.Items {
		for _, p := range svc.Spec.Ports {
			if p.NodePort == 0 || len(addresses) == 0 {
				continue
			}
			fmt.Fprintf(out, "node port %s/%s:%d → %s (and the same port on every node)\n", svc.Namespace, svc.Name, p.Port,
				ServiceURL(p.Name, int(p.Port), net.JoinHostPort(addresses[0], fmt.Sprint(p.NodePort))))
		}
	}
	return nil
}

// ServiceURL writes a Service port's address as a URL: https for the port HTTPS conventionally uses (the API
// server's among them) or a port named https, else http.
func ServiceURL(portName string, port int, address string) string {
	if port == 443 || port == 6443 || portName == "https" || strings.HasPrefix(portName, "https-") {
		return "https://" + address
	}
	return "http://" + address
}
