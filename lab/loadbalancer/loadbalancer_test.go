package loadbalancer

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// loopbackAddresses hands out 127.0.0.1 as the ingress address, so the balancer tests need no root.
type loopbackAddresses struct{ released int }

func (a *loopbackAddresses) AllocateExternal(net.IP) (net.IP, error) {
	return net.IPv4(127, 0, 0, 1), nil
}
func (a *loopbackAddresses) ReleaseExternal(net.IP) error { a.released++; return nil }
func (a *loopbackAddresses) BalancerNamespace() string    { return "" }
func (a *loopbackAddresses) BalancerIP() net.IP           { return net.IPv4(127, 0, 0, 1) }

// loopbackNode is one node on loopback whose "NodePort" is the backend itself; its conntrack says the connection
// went to the Pod with UID pod-1.
type loopbackNode struct {
	backend, healthz string
}

func (n loopbackNode) Nodes() []kubeproxy.Node {
	return []kubeproxy.Node{{Name: "n1", IP: net.IPv4(127, 0, 0, 1), Healthz: n.healthz}}
}

func (n loopbackNode) RouteOf(node string, _, _ *net.TCPAddr) (kubeproxy.Routed, error) {
	return kubeproxy.Routed{Node: node, Endpoint: n.backend, PodUID: "pod-1"}, nil
}

// backendServer listens on loopback and hands each connection to handle.
func backendServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

type balancerFixture struct {
	balancers *Balancers
	metrics   *Metrics
	address   string // the balancer's ingress address and port
}

// startBalancer runs the balancers on a fake API with one LoadBalancer Service in front of one node whose
// NodePort is backend (host:port), a Pod with UID "pod-1".
func startBalancer(t *testing.T, mode, backend string) balancerFixture {
	t.Helper()
	_, portText, _ := net.SplitHostPort(backend)
	backendPort, _ := strconv.Atoi(portText)
	port := freePort(t)
	client := fake.NewClientset(
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer,
			Ports: []corev1.ServicePort{{Name: "http", Port: int32(port), NodePort: int32(backendPort)}}}})
	logger := slog.New(slog.DiscardHandler)
	healthz := backendServer(t, func(c net.Conn) {
		defer c.Close()
		_, _ = http.ReadRequest(bufio.NewReader(c))
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := loopbackNode{backend: backend, healthz: healthz}
	metrics := NewMetrics(prometheus.NewRegistry())
	addresses := &loopbackAddresses{}
	b, err := Start(client, d, addresses, Options{Mode: mode, IdleTimeout: time.Minute}, metrics, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if _, ok := b.Ingress("ns", "web"); ok {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("no balancer for the LoadBalancer Service")
		}
	}
	// The ingress address reaches the API, as kubectl get svc shows it.
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		svc, err := client.CoreV1().Services("ns").Get(ctx, "web", metav1.GetOptions{})
		if err == nil && len(svc.Status.LoadBalancer.Ingress) == 1 && svc.Status.LoadBalancer.Ingress[0].IP == "127.0.0.1" {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("Service status: %+v %v", svc.Status, err)
		}
	}
	return balancerFixture{balancers: b, metrics: metrics, address: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// A refused backend resets the client's connection (tcp mode), which the balancer had accepted.
func TestTCPBalancerResetsTheClientWhenTheBackendRefuses(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	backend := closed.Addr().String()
	closed.Close()
	f := startBalancer(t, TCP, backend)
	routed := 0
	for range 5 {
		// On loopback the reset may even beat the end of the client's connect; either way it is a reset.
		conn, err := net.Dial("tcp", f.address)
		if err != nil {
			if !isReset(err) {
				t.Fatalf("connect: %v, want success or a reset", err)
			}
			continue
		}
		conn.Write([]byte("GET /say HTTP/1.1\r\nHost: x\r\n\r\n"))
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Read(make([]byte, 10)); !isReset(err) {
			t.Errorf("client saw %v, want a reset", err)
		}
		if r, ok := f.balancers.RouteOf(conn.LocalAddr().String()); !ok || r.PodUID != "pod-1" || r.Endpoint != backend {
			t.Errorf("route of the client's connection: %+v %v", r, ok)
		}
		routed++
		conn.Close()
	}
	if routed == 0 {
		t.Error("no connect completed in 5 tries")
	}
	if got := testutil.ToFloat64(f.metrics.BackendFailures.WithLabelValues("tcp", "refused")); got != 5 {
		t.Errorf("backend failures refused = %v", got)
	}
}

// hangingBackend listens with a full accept queue and never accepts, so a connect to it waits for an answer as one
// to a Pod whose network is gone does.
func hangingBackend(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// The queue takes one connection; later SYNs are dropped.
	for range 2 {
		filler, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { filler.Close() })
	}
	return addr
}

// A client that gives up before the balancer's backend connect does (both wait about 5 s for a Pod that is gone)
// still learns where the node's rules sent its connection.
func TestRouteIsKnownWhileTheBackendConnectWaits(t *testing.T) {
	backend := hangingBackend(t)
	f := startBalancer(t, TCP, backend)
	conn, err := net.Dial("tcp", f.address)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /say HTTP/1.1\r\nHost: x\r\n\r\n"))
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v, want the client's own timeout (the backend connect still waits)", err)
	}
	if r, ok := f.balancers.RouteOf(conn.LocalAddr().String()); !ok || r.PodUID != "pod-1" || r.Node != "n1" {
		t.Errorf("route while the backend connect waits: %+v %v", r, ok)
	}
}

// A backend that resets mid-response resets the client; one that answers and closes passes the answer on.
func TestTCPBalancerPassesResetsAndClosesOn(t *testing.T) {
	resetting := backendServer(t, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"))
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	f := startBalancer(t, TCP, resetting)
	conn, err := net.Dial("tcp", f.address)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /say HTTP/1.1\r\nHost: x\r\n\r\n"))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = io.ReadAll(conn)
	if !isReset(err) {
		t.Errorf("client saw %v after a backend reset, want a reset", err)
	}
	answering := backendServer(t, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nmoo"))
		c.Close()
	})
	g := startBalancer(t, TCP, answering)
	resp, err := http.Get("http://" + g.address + "/say")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "moo" {
		t.Errorf("body %q", body)
	}
}

// A client that goes away closes its backend connection.
func TestTCPBalancerClosesTheBackendWhenTheClientGoes(t *testing.T) {
	closedByBalancer := make(chan error, 1)
	backend := backendServer(t, func(c net.Conn) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := io.ReadAll(c)
		closedByBalancer <- err
	})
	f := startBalancer(t, TCP, backend)
	conn, err := net.Dial("tcp", f.address)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GET /say HTTP/1.1\r\n"))
	conn.Close()
	select {
	case err := <-closedByBalancer:
		if err != nil {
			t.Errorf("backend saw %v, want its connection closed", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the backend connection outlived the client")
	}
}

// The http balancer answers 502 when the backend refuses, and — with no retry — when a pooled backend connection
// is closed as the next request arrives on it.
func TestHTTPBalancerAnswers502WithoutRetrying(t *testing.T) {
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	refusing := closed.Addr().String()
	closed.Close()
	f := startBalancer(t, HTTP, refusing)
	resp, err := http.Get("http://" + f.address + "/say")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("refused backend: status %d, want 502", resp.StatusCode)
	}

	// One answer, then the connection is closed when the second request arrives (an idle close racing it).
	racing := backendServer(t, func(c net.Conn) {
		r := bufio.NewReader(c)
		if _, err := http.ReadRequest(r); err != nil {
			return
		}
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nmoo"))
		http.ReadRequest(r)
		c.Close()
	})
	g := startBalancer(t, HTTP, racing)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var codes []int
	for range 2 {
		resp, err := client.Get("http://" + g.address + "/say")
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 200 || codes[1] != http.StatusBadGateway {
		t.Errorf("statuses %v, want 200 then 502", codes)
	}
	if got := testutil.ToFloat64(g.metrics.BackendConnections.WithLabelValues("http")); got != 1 {
		t.Errorf("%v backend connections: the balancer retried on a new one", got)
	}
	if got := testutil.ToFloat64(g.metrics.Responses502.WithLabelValues("http")); got != 1 {
		t.Errorf("502s counted %v", got)
	}
}

// A Service chooses its balancer's protocol with the reference cloud's annotation; without it the lab's default holds.
func TestServiceAnnotationChoosesTheBackendProtocol(t *testing.T) {
	svc := func(value string) *corev1.Service {
		s := &corev1.Service{}
		if value != "" {
			s.Annotations = map[string]string{BackendProtocolAnnotation: value}
		}
		return s
	}
	for _, c := range []struct{ annotation, fallback, want string }{
		{"", TCP, TCP}, {"", HTTP, HTTP}, {"HTTP", TCP, HTTP}, {"http", TCP, HTTP}, {"TCP", HTTP, TCP}, {"HTTP2", TCP, TCP},
	} {
		if got := serviceMode(svc(c.annotation), c.fallback); got != c.want {
			t.Errorf("annotation %q, default %s: %s, want %s", c.annotation, c.fallback, got, c.want)
		}
	}
}
