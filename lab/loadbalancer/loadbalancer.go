// Package loadbalancer is the lab's cloud load balancer controller (the part of a cloud-controller-manager that
// serves Services of type LoadBalancer): an ingress address per Service and a balancer there that spreads
// connections round robin over every healthy node's address:NodePort, where the node's kube-proxy rules (the
// kernel's DNAT) pick the Pod; nodes are health-checked on kube-proxy's /healthz (:10256), as the reference cloud's
// controller configures it for externalTrafficPolicy Cluster.
package loadbalancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rollout-lab/rollout-lab/internal/wellknown"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/lab/nsnet"
	"github.com/rollout-lab/rollout-lab/timeline/clusterwatch"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
)

// Load balancer modes: what a cloud's load balancer does for a Service of type LoadBalancer.
const (
	// TCP proxies each client connection to one backend connection, opened when the client connects
	// and routed through a node's proxy view; a backend that refuses or resets resets the client's connection,
	// one that closes closes it. The default backend protocol of the reference experiment's cloud for a Service
	// without annotations (oracle/oci-cloud-controller-manager: protocol TCP).
	TCP = "tcp"
	// HTTP is an HTTP reverse proxy with pooled keep-alive backend connections and no retries: a
	// backend that refuses, resets or closes before answering gets the client a 502, as cloud HTTP listeners and
	// common ingress controllers do by default.
	HTTP = "http"
)

// Options configure the lab's load balancers.
type Options struct {
	Mode string
	// IdleTimeout closes pooled backend connections idle this long (http mode).
	IdleTimeout time.Duration
}

// Default is the reference experiment's: TCP, with a backend idle timeout of 60 s (a common default
// of cloud HTTP listeners, unused in tcp mode).
var Default = Options{Mode: TCP, IdleTimeout: 60 * time.Second}

// discardLog keeps the proxy's per-request complaints out of the runner's output: the metrics count them.
var discardLog = log.New(io.Discard, "", 0)

// backendConnectTimeout bounds a backend connect: a Pod already gone does not answer at all.
const backendConnectTimeout = 5 * time.Second

// routeJournalTTL is how long the balancer remembers which backend a client connection used, for attribution.
const routeJournalTTL = 2 * time.Minute

// externalAddresses hands out and takes back ingress addresses on the load balancer's host: its network namespace
// ("" for the process's own), where the balancers listen and dial from, and its address on the node network, the
// balancers' source address towards the nodes.
type externalAddresses interface {
	AllocateExternal(want net.IP) (net.IP, error)
	ReleaseExternal(net.IP) error
	BalancerNamespace() string
	BalancerIP() net.IP
}

// Backends are the nodes behind every balancer and what their kube-proxy did with a connection.
type Backends interface {
	// Nodes lists the nodes and their addresses.
	Nodes() []kubeproxy.Node
	// RouteOf tells where the node's rules sent the connection src → dst (its conntrack entry).
	RouteOf(node string, src, dst *net.TCPAddr) (kubeproxy.Routed, error)
}

// Health checks of the nodes, as the reference cloud's controller sets them for a Service without annotations
// (oracle/oci-cloud-controller-manager docs/load-balancer-annotations.md: interval 10000 ms, timeout 3000 ms,
// retries 3) on kube-proxy's healthz port and path (k8s.io/cloud-provider service helpers: 10256, /healthz).
const (
	healthInterval = 10 * time.Second
	healthTimeout  = 3 * time.Second
	healthRetries  = 3
)

// BackendProtocolAnnotation chooses a Service's balancer mode (see wellknown); without it the lab's default applies.
const BackendProtocolAnnotation = wellknown.BackendProtocolAnnotation

// serviceMode is the balancer mode a Service asks for, or the default.
func serviceMode(svc *corev1.Service, fallback string) string {
	switch strings.ToUpper(svc.Annotations[BackendProtocolAnnotation]) {
	case "TCP":
		return TCP
	case "HTTP":
		return HTTP
	}
	return fallback
}

// Balancers is the lab's cloud load balancer controller: a Service of type LoadBalancer gets an ingress address
// (status.loadBalancer.ingress) and a balancer listening there on each Service port, which spreads connections over
// the nodes (round robin) and lets each node's proxy view pick the Pod, as a cloud balancer in front of NodePorts
// does.
type Balancers struct {
	opts      Options
	client    kubernetes.Interface
	backends  Backends
	addresses externalAddresses
	metrics   *Metrics
	logger    *slog.Logger
	factory   informers.SharedInformerFactory
	stop      chan struct{}

	mu       sync.Mutex
	services map[string]*balancer // ns/name
	journal  map[string]journalEntry
	swept    time.Time
	next     int
	failures map[string]int // node → consecutive failed health checks
}

type journalEntry struct {
	route kubeproxy.Routed
	// connecting is a backend connect still waiting for an answer (a Pod whose network is gone answers nothing):
	// the node's conntrack entry already tells where the rules sent it, so RouteOf asks it then.
	connecting *backendConnect
	at         time.Time
}

type backendConnect struct {
	node     string
	src, dst *net.TCPAddr
}

// balancer serves one Service.
type balancer struct {
	ip        net.IP
	listeners []net.Listener
	servers   []*http.Server
	transport *http.Transport
}

// Start watches Services and runs a balancer for each of type LoadBalancer.
func Start(client kubernetes.Interface, backends Backends, addresses externalAddresses, opts Options, metrics *Metrics, logger *slog.Logger) (*Balancers, error) {
	if opts.Mode == "" {
		opts.Mode = Default.Mode
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = Default.IdleTimeout
	}
	if opts.Mode != TCP && opts.Mode != HTTP {
		return nil, fmt.Errorf("load balancer mode %q: want %s or %s", opts.Mode, TCP, HTTP)
	}
	b := &Balancers{opts: opts, client: client, backends: backends, addresses: addresses, metrics: metrics, logger: logger,
		stop: make(chan struct{}), services: map[string]*balancer{}, journal: map[string]journalEntry{}, failures: map[string]int{}}
	go b.checkHealth()
	b.factory = informers.NewSharedInformerFactory(client, 0)
	informer := b.factory.Core().V1().Services().Informer()
	if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { b.sync(obj, false) },
		UpdateFunc: func(_, obj any) { b.sync(obj, false) },
		DeleteFunc: func(obj any) { b.sync(obj, true) },
	}); err != nil {
		return nil, err
	}
	b.factory.Start(b.stop)
	b.factory.WaitForCacheSync(b.stop)
	return b, nil
}

// Mode is the balancers' mode.
func (b *Balancers) Mode() string { return b.opts.Mode }

func (b *Balancers) sync(obj any, deleted bool) {
	svc, ok := clusterwatch.Deleted(obj).(*corev1.Service)
	if !ok {
		return
	}
	key := svc.Namespace + "/" + svc.Name
	b.mu.Lock()
	existing := b.services[key]
	b.mu.Unlock()
	wanted := !deleted && svc.Spec.Type == corev1.ServiceTypeLoadBalancer
	switch {
	case !wanted && existing != nil:
		b.remove(key, existing)
	case wanted && existing == nil:
		lb, err := b.create(svc)
		if err != nil {
			b.logger.Warn("load balancer", "service", key, "err", err)
			return
		}
		b.mu.Lock()
		b.services[key] = lb
		b.mu.Unlock()
		b.setIngress(svc, lb.ip)
	case wanted && !hasIngress(svc, existing.ip):
		// Someone (an apply of the Service) wrote its status over: set it again, as a cloud controller does.
		b.setIngress(svc, existing.ip)
	}
}

func hasIngress(svc *corev1.Service, ip net.IP) bool {
	for _, in := range svc.Status.LoadBalancer.Ingress {
		if in.IP == ip.String() {
			return true
		}
	}
	return false
}

func (b *Balancers) setIngress(svc *corev1.Service, ip net.IP) {
	mode := corev1.LoadBalancerIPModeVIP
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		current, err := b.client.CoreV1().Services(svc.Namespace).Get(context.Background(), svc.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		current.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip.String(), IPMode: &mode}}
		_, err = b.client.CoreV1().Services(svc.Namespace).UpdateStatus(context.Background(), current, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		b.logger.Warn("load balancer status", "service", svc.Namespace+"/"+svc.Name, "err", err)
	}
}

func (b *Balancers) create(svc *corev1.Service) (*balancer, error) {
	// A Service may ask for its address (a cloud's reserved static address): net.ParseIP gives nil for none.
	ip, err := b.addresses.AllocateExternal(net.ParseIP(svc.Spec.LoadBalancerIP))
	if err != nil {
		return nil, err
	}
	mode := serviceMode(svc, b.opts.Mode)
	lb := &balancer{ip: ip}
	if mode == HTTP {
		lb.transport = b.backendTransport()
	}
	for _, p := range svc.Spec.Ports {
		ln, err := nsnet.Listen(b.addresses.BalancerNamespace(), "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(int(p.Port))))
		if err != nil {
			b.close(lb)
			return nil, err
		}
		lb.listeners = append(lb.listeners, ln)
		if p.NodePort == 0 {
			b.close(lb)
			return nil, fmt.Errorf("port %d has no node port", p.Port)
		}
		nodePort := int(p.NodePort)
		// The HTTP proxy's URL names the node pool and the port; dialBackend picks the node.
		target := fmt.Sprintf("nodes:%d", nodePort)
		if mode == TCP {
			go b.serveTCP(ln, nodePort)
		} else {
			server := &http.Server{Handler: b.httpProxy(lb.transport, target), ReadHeaderTimeout: time.Minute, ErrorLog: discardLog}
			lb.servers = append(lb.servers, server)
			go server.Serve(ln)
		}
	}
	b.logger.Info("load balancer", "service", svc.Namespace+"/"+svc.Name, "ingress", ip.String(), "mode", mode)
	return lb, nil
}

func (b *Balancers) remove(key string, lb *balancer) {
	b.mu.Lock()
	delete(b.services, key)
	b.mu.Unlock()
	b.close(lb)
}

func (b *Balancers) close(lb *balancer) {
	for _, s := range lb.servers {
		s.Close()
	}
	for _, ln := range lb.listeners {
		ln.Close()
	}
	if lb.transport != nil {
		lb.transport.CloseIdleConnections()
	}
	if err := b.addresses.ReleaseExternal(lb.ip); err != nil {
		b.logger.Warn("load balancer address", "ip", lb.ip.String(), "err", err)
	}
}

// Stop closes every balancer and takes its address back.
func (b *Balancers) Stop() {
	select {
	case <-b.stop:
		return
	default:
	}
	close(b.stop)
	b.factory.Shutdown()
	b.mu.Lock()
	services := b.services
	b.services = map[string]*balancer{}
	b.mu.Unlock()
	for _, lb := range services {
		b.close(lb)
	}
}

// Ingress is the ingress address of a Service's balancer, when it has one.
func (b *Balancers) Ingress(namespace, name string) (net.IP, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	lb, ok := b.services[namespace+"/"+name]
	if !ok {
		return nil, false
	}
	return lb.ip, true
}

// RouteOf tells which backend (node, Pod address, Pod UID) the balancer used for the client connection from
// clientAddr (the client's local address), as long as it remembers.
func (b *Balancers) RouteOf(clientAddr string) (kubeproxy.Routed, bool) {
	b.mu.Lock()
	e, ok := b.journal[clientAddr]
	b.mu.Unlock()
	if c := e.connecting; c != nil {
		// A client may give up (its own timeout) before the balancer's connect does.
		if r, err := b.backends.RouteOf(c.node, c.src, c.dst); err == nil {
			return r, true
		}
		return kubeproxy.Routed{Node: c.node}, true
	}
	return e.route, ok
}

func (b *Balancers) remember(clientAddr string, r kubeproxy.Routed) {
	b.record(clientAddr, journalEntry{route: r})
}

func (b *Balancers) record(clientAddr string, e journalEntry) {
	if clientAddr == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	e.at = now
	b.journal[clientAddr] = e
	if now.Sub(b.swept) > routeJournalTTL/4 {
		for k, e := range b.journal {
			if now.Sub(e.at) > routeJournalTTL {
				delete(b.journal, k)
			}
		}
		b.swept = now
	}
}

// backendErrorClass names a backend failure with the load's error classes.
func backendErrorClass(err error) string {
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	}
	return "other"
}

func (b *Balancers) countConnection(mode string) {
	if b.metrics != nil {
		b.metrics.BackendConnections.WithLabelValues(mode).Inc()
	}
}

// checkHealth asks every node's kube-proxy /healthz each interval; a node that failed healthRetries checks in a row
// gets no new connections until it answers again.
func (b *Balancers) checkHealth() {
	dialer := &net.Dialer{}
	client := &http.Client{Timeout: healthTimeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return nsnet.Dial(ctx, b.addresses.BalancerNamespace(), dialer, network, addr)
		},
	}}
	ticker := time.NewTicker(healthInterval)
	defer ticker.Stop()
	for {
		for _, n := range b.backends.Nodes() {
			ok := false
			if resp, err := client.Get(n.HealthzURL()); err == nil {
				ok = resp.StatusCode == http.StatusOK
				resp.Body.Close()
			}
			b.mu.Lock()
			if ok {
				b.failures[n.Name] = 0
			} else {
				b.failures[n.Name]++
			}
			b.mu.Unlock()
		}
		select {
		case <-b.stop:
			return
		case <-ticker.C:
		}
	}
}

// pickNode is the next healthy node, round robin (every node when none is healthy: a balancer with no healthy
// backend has nowhere better to send).
func (b *Balancers) pickNode() (kubeproxy.Node, error) {
	nodes := b.backends.Nodes()
	if len(nodes) == 0 {
		return kubeproxy.Node{}, errors.New("no nodes")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for range nodes {
		n := nodes[b.next%len(nodes)]
		b.next++
		if b.failures[n.Name] < healthRetries {
			return n, nil
		}
	}
	n := nodes[b.next%len(nodes)]
	b.next++
	return n, nil
}

// dialBackend opens a backend connection to a node's NodePort from the balancer host's address, bound before
// the connect so that its source port is known even when the connect fails. The route — where the node's rules sent
// the connection, from its conntrack entry (for a refused one too) — is remembered for client (the client
// connection's address; "" when no client is waiting for this connection).
func (b *Balancers) dialBackend(ctx context.Context, mode string, nodePort int, client string) (net.Conn, kubeproxy.Routed, error) {
	b.countConnection(mode)
	node, err := b.pickNode()
	if err != nil {
		b.remember(client, kubeproxy.Routed{})
		return nil, kubeproxy.Routed{}, err
	}
	dst := &net.TCPAddr{IP: node.IP, Port: nodePort}
	var src *net.TCPAddr
	dialer := kubeproxy.BoundDialer(b.addresses.BalancerIP(), func(a *net.TCPAddr) {
		src = a
		b.record(client, journalEntry{route: kubeproxy.Routed{Node: node.Name}, connecting: &backendConnect{node: node.Name, src: a, dst: dst}})
	})
	ctx, cancel := context.WithTimeout(ctx, backendConnectTimeout)
	defer cancel()
	conn, err := nsnet.Dial(ctx, b.addresses.BalancerNamespace(), dialer, "tcp", dst.String())
	r := kubeproxy.Routed{Node: node.Name}
	if src != nil {
		if found, lookupErr := b.backends.RouteOf(node.Name, src, dst); lookupErr == nil {
			r = found
		}
	}
	b.remember(client, r)
	return conn, r, err
}

// resetConn closes c with a TCP RST, as a balancer does when its backend refused or reset.
func resetConn(c net.Conn) {
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	c.Close()
}

func (b *Balancers) serveTCP(ln net.Listener, nodePort int) {
	for {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		go b.proxyTCP(client, nodePort)
	}
}

func (b *Balancers) proxyTCP(client net.Conn, nodePort int) {
	clientAddr := client.RemoteAddr().String()
	backend, _, err := b.dialBackend(context.Background(), TCP, nodePort, clientAddr)
	if err != nil {
		b.countFailure(TCP, err)
		// Through a cloud's network the backend's refusal takes a round trip, so the client's connect has completed
		// and its request is on the way when the reset comes; on one machine the reset would beat the connect. Wait
		// for the client's first bytes (at most a second) so it meets the reset as it would there.
		_ = client.SetReadDeadline(time.Now().Add(time.Second))
		_, _ = client.Read(make([]byte, 1))
		resetConn(client)
		return
	}
	// Each direction ends as the other side ended it: a reset is passed on as a reset, a close as a close.
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(backend, client)
		if err == nil {
			_ = backend.(*net.TCPConn).CloseWrite()
		}
		done <- nil
	}()
	_, err = io.Copy(client, backend)
	if err != nil && backendErrorClass(err) == "reset" {
		b.countFailure(TCP, err)
		resetConn(client)
		backend.Close()
		<-done
		return
	}
	if tcp, ok := client.(*net.TCPConn); ok {
		_ = tcp.CloseWrite()
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second): // a client that never closes its side
	}
	client.Close()
	backend.Close()
}

func (b *Balancers) countFailure(mode string, err error) {
	if b.metrics != nil {
		b.metrics.BackendFailures.WithLabelValues(mode, backendErrorClass(err)).Inc()
	}
}

// routedBackendConn remembers the route of a pooled backend connection.
type routedBackendConn struct {
	net.Conn
	route kubeproxy.Routed
}

func (b *Balancers) backendTransport() *http.Transport {
	return &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			// The URL names the node pool and the NodePort; the balancer picks the node, its rules the Pod.
			_, portText, _ := net.SplitHostPort(addr)
			nodePort, err := strconv.Atoi(portText)
			if err != nil {
				return nil, fmt.Errorf("backend %q: %w", addr, err)
			}
			// The client whose request asked for this connection (another may end up using it).
			client, _ := ctx.Value(clientAddrKey{}).(string)
			conn, r, err := b.dialBackend(ctx, HTTP, nodePort, client)
			if err != nil {
				return nil, err
			}
			return &routedBackendConn{Conn: conn, route: r}, nil
		},
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     b.opts.IdleTimeout,
		DisableCompression:  true,
		Proxy:               nil,
	}
}

type clientAddrKey struct{}

// noRetryBody marks a proxied request as not replayable: Go's transport retries an idempotent request whose
// reused connection failed before answering, and a balancer without retries must answer 502 instead.
type noRetryBody struct{}

func (noRetryBody) Read([]byte) (int, error) { return 0, io.EOF }
func (noRetryBody) Close() error             { return nil }

func (b *Balancers) httpProxy(transport *http.Transport, target string) http.Handler {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", target
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			if pr.Out.Body == nil {
				pr.Out.Body, pr.Out.GetBody, pr.Out.ContentLength = noRetryBody{}, nil, 0
			}
			client := pr.In.RemoteAddr
			*pr.Out = *pr.Out.WithContext(httptrace.WithClientTrace(context.WithValue(pr.Out.Context(), clientAddrKey{}, client), &httptrace.ClientTrace{
				GotConn: func(info httptrace.GotConnInfo) {
					if c, ok := info.Conn.(*routedBackendConn); ok {
						b.remember(client, c.route)
					}
				},
			}))
		},
		Transport:     transport,
		FlushInterval: -1,
		ErrorLog:      discardLog,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			// The route is remembered already: before the connect for a new backend connection, on GotConn for a
			// pooled one.
			b.countFailure(HTTP, err)
			if b.metrics != nil {
				b.metrics.Responses502.WithLabelValues(HTTP).Inc()
			}
			w.WriteHeader(http.StatusBadGateway)
		},
	}
}
