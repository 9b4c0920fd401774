// Package kubeproxy is the lab's kube-proxy: each node's own view of the EndpointSlices, programmed after a
// modelled delay (kube-proxy's min-sync-period), and the connections that view routes: a connection picks its node,
// then a ready endpoint from that node's view when it opens, as iptables/nftables DNAT does, and stays on it.
package kubeproxy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/rollout-lab/rollout-lab/timeline"
	"github.com/rollout-lab/rollout-lab/timeline/clusterwatch"
)

// ServiceOutModel is how long a node's proxy takes to program an EndpointSlice change, on top of the
// EndpointSlice controller's own (real) latency.
//
// Default: uniform between 0 and 1 s. kube-proxy (iptables and nftables modes) batches changes and resyncs no more
// often than --iptables-min-sync-period / --nftables-min-sync-period, whose default is 1 s; a change therefore
// lands on each node after a wait between 0 and that period (plus the short programming time itself), independently
// per node. This is not tuned to any expected result.
type ServiceOutModel struct {
	Min, Max time.Duration
}

// DefaultServiceOutModel is kube-proxy's default min-sync-period behaviour.
var DefaultServiceOutModel = ServiceOutModel{Min: 0, Max: time.Second}

func (m ServiceOutModel) draw(r *rand.Rand) time.Duration {
	if m.Max <= m.Min {
		return m.Min
	}
	return m.Min + time.Duration(r.Int64N(int64(m.Max-m.Min)))
}

// Dataplane is the lab's kube-proxy: each node has its own view of the EndpointSlices, updated after the model's
// delay; a connection picks its node (spread like an external load balancer) and then a ready endpoint from that
// node's view when it opens, as iptables/nftables DNAT does, and stays on it.
type Dataplane struct {
	client   kubernetes.Interface
	logger   *slog.Logger
	nodeIP   string // the nodes' address as Pods see it: node ports are served there too
	nodes    []string
	model    ServiceOutModel
	recorder *timeline.Recorder
	mu       sync.Mutex
	rng      *rand.Rand
	services map[string]*corev1.Service                       // ns/name
	views    map[string]map[string]*discoveryv1.EndpointSlice // node → ns/slice → slice
	applyAt  map[string]time.Time                             // node → when its last change lands
	queues   map[string]chan sliceChange                      // node → its changes, in the order they land
	forwards map[string]net.Listener                          // "ns/name:port" → loopback listener, for people
	next     int
	factory  informers.SharedInformerFactory
	stop     chan struct{}
	workers  sync.WaitGroup
}

// sliceChange is an EndpointSlice change waiting for a node's proxy to program it.
type sliceChange struct {
	at, seen time.Time
	key      string
	slice    *discoveryv1.EndpointSlice
	deleted  bool
}

// proxyQueueSize is how many EndpointSlice changes a node's proxy holds before the watch waits for it.
const proxyQueueSize = 4096

// Start watches Services and EndpointSlices and keeps each node's view.
func Start(client kubernetes.Interface, nodes []string, nodeIP string, model ServiceOutModel, recorder *timeline.Recorder, logger *slog.Logger) (*Dataplane, error) {
	return startDataplane(client, nodes, nodeIP, model, recorder, logger, proxyQueueSize)
}

func startDataplane(client kubernetes.Interface, nodes []string, nodeIP string, model ServiceOutModel, recorder *timeline.Recorder, logger *slog.Logger, queueSize int) (*Dataplane, error) {
	d := &Dataplane{client: client, logger: logger, nodeIP: nodeIP, nodes: nodes, model: model, recorder: recorder, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		services: map[string]*corev1.Service{}, views: map[string]map[string]*discoveryv1.EndpointSlice{}, applyAt: map[string]time.Time{},
		queues: map[string]chan sliceChange{}, forwards: map[string]net.Listener{}, stop: make(chan struct{})}
	for _, n := range nodes {
		d.views[n] = map[string]*discoveryv1.EndpointSlice{}
		d.queues[n] = make(chan sliceChange, queueSize)
		d.workers.Add(1)
		go d.program(n)
	}
	d.factory = informers.NewSharedInformerFactory(client, 0)
	svcInformer := d.factory.Core().V1().Services().Informer()
	if _, err := svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { d.setService(obj, false) },
		UpdateFunc: func(_, obj any) { d.setService(obj, false) },
		DeleteFunc: func(obj any) { d.setService(obj, true) },
	}); err != nil {
		return nil, err
	}
	sliceInformer := d.factory.Discovery().V1().EndpointSlices().Informer()
	if _, err := sliceInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { d.sliceChanged(obj, false) },
		UpdateFunc: func(_, obj any) { d.sliceChanged(obj, false) },
		DeleteFunc: func(obj any) { d.sliceChanged(obj, true) },
	}); err != nil {
		return nil, err
	}
	d.factory.Start(d.stop)
	d.factory.WaitForCacheSync(d.stop)
	return d, nil
}

func (d *Dataplane) setService(obj any, deleted bool) {
	svc, ok := clusterwatch.Deleted(obj).(*corev1.Service)
	if !ok {
		return
	}
	key := svc.Namespace + "/" + svc.Name
	d.mu.Lock()
	defer d.mu.Unlock()
	if deleted {
		delete(d.services, key)
	} else {
		d.services[key] = svc
	}
	// Every Service port also gets a loopback port that forwards the same way, for curl and browsers; a node port
	// (type NodePort or LoadBalancer) is also served on 127.0.0.1:<nodePort>, as on a node of a cluster.
	wanted := map[string]string{} // forward name → the address to listen on
	if !deleted {
		for _, p := range svc.Spec.Ports {
			wanted[fmt.Sprintf("%s:%d", key, p.Port)] = "127.0.0.1:0"
			if p.NodePort != 0 {
				// On loopback for the host's clients, and on the node's address for Pods (NodeIP:NodePort).
				wanted[fmt.Sprintf("%s:%d/node:%d", key, p.Port, p.NodePort)] = fmt.Sprintf("127.0.0.1:%d", p.NodePort)
				if d.nodeIP != "" {
					wanted[fmt.Sprintf("%s:%d/node:%d@%s", key, p.Port, p.NodePort, d.nodeIP)] = net.JoinHostPort(d.nodeIP, strconv.Itoa(int(p.NodePort)))
				}
			}
		}
	}
	for name, ln := range d.forwards {
		if _, ok := wanted[name]; strings.HasPrefix(name, key+":") && !ok {
			ln.Close()
			delete(d.forwards, name)
		}
	}
	for name, listen := range wanted {
		if _, ok := d.forwards[name]; ok {
			continue
		}
		servicePort, _ := strconv.Atoi(strings.SplitN(name[len(key)+1:], "/", 2)[0])
		ln, err := d.forward(svc.Name+"."+svc.Namespace, servicePort, listen)
		if err != nil {
			d.logger.Warn("forward", "service", name, "err", err)
			continue
		}
		d.forwards[name] = ln
	}
}

// Forwards lists the loopback address of every Service port ("namespace/name:port" → "127.0.0.1:PORT"), and of
// every node port ("namespace/name:port/node:NODEPORT" → "127.0.0.1:NODEPORT").
func (d *Dataplane) Forwards() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]string{}
	for name, ln := range d.forwards {
		out[name] = ln.Addr().String()
	}
	return out
}

// sliceChanged queues the change on every node after its own delay. A node never programs a change before an
// earlier one, as one kube-proxy syncs the whole state in order.
func (d *Dataplane) sliceChanged(obj any, deleted bool) {
	slice, ok := clusterwatch.Deleted(obj).(*discoveryv1.EndpointSlice)
	if !ok {
		return
	}
	seen := time.Now()
	changes := make([]sliceChange, len(d.nodes))
	d.mu.Lock()
	for i, node := range d.nodes {
		at := seen.Add(d.model.draw(d.rng))
		if last := d.applyAt[node]; at.Before(last) {
			at = last
		}
		d.applyAt[node] = at
		changes[i] = sliceChange{at: at, seen: seen, key: slice.Namespace + "/" + slice.Name, slice: slice, deleted: deleted}
	}
	d.mu.Unlock()
	// Queued without the lock: a node's proxy takes d.mu to apply a change, so a full queue must not be waited on
	// while holding it. The informer calls this from one goroutine, so each queue keeps the order of the changes.
	for i, node := range d.nodes {
		select {
		case d.queues[node] <- changes[i]:
		case <-d.stop:
			return
		}
	}
}

// program is a node's proxy: it applies the node's changes one after another, each at its time.
func (d *Dataplane) program(node string) {
	defer d.workers.Done()
	for {
		select {
		case <-d.stop:
			return
		case c := <-d.queues[node]:
			select {
			case <-time.After(time.Until(c.at)):
			case <-d.stop:
				return
			}
			d.apply(node, c.key, c.slice, c.deleted, c.seen)
		}
	}
}

func (d *Dataplane) apply(node, key string, slice *discoveryv1.EndpointSlice, deleted bool, seen time.Time) {
	d.mu.Lock()
	old := d.views[node][key]
	if deleted {
		delete(d.views[node], key)
	} else {
		d.views[node][key] = slice
	}
	d.mu.Unlock()
	if old == nil || d.recorder == nil {
		return
	}
	stillReady := map[string]bool{}
	if !deleted {
		for _, e := range slice.Endpoints {
			if clusterwatch.EndpointReady(e) && len(e.Addresses) > 0 {
				stillReady[e.Addresses[0]] = true
			}
		}
	}
	for _, e := range old.Endpoints {
		if !clusterwatch.EndpointReady(e) || len(e.Addresses) == 0 || stillReady[e.Addresses[0]] {
			continue
		}
		ev := timeline.Event{Type: timeline.EventServiceOut, Node: node, PodIP: e.Addresses[0],
			Message: fmt.Sprintf("programmed %s after the EndpointSlice change", time.Since(seen).Round(time.Millisecond))}
		if e.TargetRef != nil {
			ev.Namespace, ev.Pod, ev.UID = e.TargetRef.Namespace, e.TargetRef.Name, string(e.TargetRef.UID)
		}
		d.recorder.Record(ev)
	}
}

// Stop ends the watches.
func (d *Dataplane) Stop() {
	select {
	case <-d.stop:
		return
	default:
	}
	close(d.stop)
	d.factory.Shutdown()
	d.workers.Wait()
	d.mu.Lock()
	for name, ln := range d.forwards {
		ln.Close()
		delete(d.forwards, name)
	}
	d.mu.Unlock()
}

// lookup finds a Service by "name.namespace[.svc[.cluster.local]]" or its cluster IP.
func (d *Dataplane) lookup(host string) (*corev1.Service, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, svc := range d.services {
		if svc.Spec.ClusterIP == host {
			return svc, nil
		}
	}
	parts := strings.Split(strings.TrimSuffix(strings.TrimSuffix(host, ".cluster.local"), ".svc"), ".")
	if len(parts) == 2 {
		if svc, ok := d.services[parts[1]+"/"+parts[0]]; ok {
			return svc, nil
		}
	}
	return nil, fmt.Errorf("lab dataplane: no Service %s", host)
}

// Route picks the node for a new connection and the endpoint in its view: pod address and node, or an error
// that reads like kube-proxy's REJECT (connection refused) when the node knows no ready endpoint.
func (d *Dataplane) Route(addr string) (endpoint, node string, err error) {
	r, err := d.RouteTo(addr)
	return r.Endpoint, r.Node, err
}

// Routed is one routing decision: the node whose proxy decided, the Pod's address and port, and its UID.
type Routed struct {
	Node, Endpoint, PodUID string
}

// RouteTo decides a new connection's route as Route does, with the Pod's UID (addresses are reused).
func (d *Dataplane) RouteTo(addr string) (Routed, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return Routed{}, err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return Routed{}, err
	}
	svc, err := d.lookup(host)
	if err != nil {
		return Routed{}, err
	}
	var portName string
	found := false
	for _, p := range svc.Spec.Ports {
		if int(p.Port) == port {
			portName, found = p.Name, true
		}
	}
	if !found {
		return Routed{}, fmt.Errorf("lab dataplane: Service %s/%s has no port %d", svc.Namespace, svc.Name, port)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	node := d.nodes[d.next%len(d.nodes)]
	d.next++
	var candidates []Routed
	for _, slice := range d.views[node] {
		if slice.Namespace != svc.Namespace || slice.Labels[discoveryv1.LabelServiceName] != svc.Name {
			continue
		}
		target := 0
		for _, p := range slice.Ports {
			if p.Name != nil && *p.Name == portName && p.Port != nil {
				target = int(*p.Port)
			}
		}
		if target == 0 {
			continue
		}
		for _, e := range slice.Endpoints {
			if clusterwatch.EndpointReady(e) && len(e.Addresses) > 0 {
				r := Routed{Node: node, Endpoint: net.JoinHostPort(e.Addresses[0], strconv.Itoa(target))}
				if e.TargetRef != nil {
					r.PodUID = string(e.TargetRef.UID)
				}
				candidates = append(candidates, r)
			}
		}
	}
	if len(candidates) == 0 {
		return Routed{Node: node}, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	}
	return candidates[d.rng.IntN(len(candidates))], nil
}

// WaitProgrammed blocks until every node's view holds want ready endpoints of the Service at addr (host:port), so
// a load that starts after it does not meet a proxy still programming a new Service.
func (d *Dataplane) WaitProgrammed(ctx context.Context, addr string, want int) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	for {
		svc, err := d.lookup(host)
		if err == nil {
			d.mu.Lock()
			programmed := 0
			for _, node := range d.nodes {
				ready := 0
				for _, slice := range d.views[node] {
					if slice.Namespace == svc.Namespace && slice.Labels[discoveryv1.LabelServiceName] == svc.Name {
						for _, e := range slice.Endpoints {
							if clusterwatch.EndpointReady(e) {
								ready++
							}
						}
					}
				}
				if ready >= want {
					programmed++
				}
			}
			d.mu.Unlock()
			if programmed == len(d.nodes) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the nodes' proxies did not program %s with %d endpoints: %w", addr, want, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Dial is the load generator's dialer: a Service address is routed as kube-proxy would on the chosen node.
func (d *Dataplane) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, _, err := d.DialRouted(ctx, network, addr)
	return conn, err
}

// DialRouted dials as Dial does and also returns the routing decision, whether or not the connection opened: a
// connection routed to a Pod that is already gone fails, and the failure belongs to that Pod.
func (d *Dataplane) DialRouted(ctx context.Context, network, addr string) (net.Conn, Routed, error) {
	r, err := d.RouteTo(addr)
	if err != nil {
		return nil, r, err
	}
	conn, err := (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext(ctx, network, r.Endpoint)
	return conn, r, err
}

// forward listens on listen and forwards each connection to the Service as the dataplane routes it.
func (d *Dataplane) forward(service string, port int, listen string) (net.Listener, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	target := net.JoinHostPort(service, strconv.Itoa(port))
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				upstream, err := d.Dial(context.Background(), "tcp", target)
				if err != nil {
					return
				}
				defer upstream.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(upstream, conn); done <- struct{}{} }()
				go func() { _, _ = io.Copy(conn, upstream); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln, nil
}
