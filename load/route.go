package load

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Route is where a target sent a connection: the Pod's address (host:port) and UID, when the target knows them
// (the lab's dataplane and its load balancers do; a cluster seen from outside does not).
type Route struct {
	Endpoint string
	Pod      string
	// Node is the node whose proxy routed the connection, when the target knows it (the lab does).
	Node string
}

// RouteHeader carries a response's route through vegeta, which keeps a result's headers but not its connection.
const RouteHeader = "X-Rollout-Lab-Route"

// String writes the route as endpoint[#pod][@node].
func (r Route) String() string {
	s := r.Endpoint
	if r.Pod != "" {
		s += "#" + r.Pod
	}
	if r.Node != "" {
		s += "@" + r.Node
	}
	return s
}

// ParseRoute reads what Route.String wrote.
func ParseRoute(s string) Route {
	rest, node, _ := strings.Cut(s, "@")
	endpoint, pod, _ := strings.Cut(rest, "#")
	return Route{Endpoint: endpoint, Pod: pod, Node: node}
}

// RoutedConn is a connection that knows its route; the route may be decided after the connection opened (a load
// balancer picks its backend once it has accepted), so it is asked for when needed.
type RoutedConn struct {
	net.Conn
	route func() Route
}

// NewRoutedConn wraps conn with the function that tells its route.
func NewRoutedConn(conn net.Conn, route func() Route) *RoutedConn {
	return &RoutedConn{Conn: conn, route: route}
}

// Route is the connection's route, as far as it is known.
func (c *RoutedConn) Route() Route {
	if c.route == nil {
		return Route{}
	}
	return c.route()
}

type routeSinkKey struct{}

// routeSink holds the route of a dial made for a request, also when the dial failed or never completed (a Pod
// already gone times out): the dialer reports it through the dial's context, which keeps the request's values.
type routeSink struct {
	mu    sync.Mutex
	route func() Route
}

// ReportRoute tells the request that asked for this dial where its connection was routed; dialers call it.
func ReportRoute(ctx context.Context, route func() Route) {
	if sink, ok := ctx.Value(routeSinkKey{}).(*routeSink); ok {
		sink.mu.Lock()
		sink.route = route
		sink.mu.Unlock()
	}
}

func (s *routeSink) get() Route {
	s.mu.Lock()
	route := s.route
	s.mu.Unlock()
	if route == nil {
		return Route{}
	}
	return route()
}

// routeOfResponse reads the route the transport put on a response.
func routeOfResponse(h http.Header) Route {
	if v := h.Get(RouteHeader); v != "" {
		return ParseRoute(v)
	}
	return Route{}
}

// holdOpen keeps each connection open for think after the client closes it, as a virtual user keeps its own
// connection through its pause: the server sees it idle, then closed.
func holdOpen(dial DialFunc, think time.Duration) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if routed, ok := conn.(*RoutedConn); ok {
			routed.Conn = &lingeringConn{Conn: routed.Conn, think: think}
			return routed, nil
		}
		return &lingeringConn{Conn: conn, think: think}, nil
	}
}

type lingeringConn struct {
	net.Conn
	think time.Duration
	once  sync.Once
}

func (c *lingeringConn) Close() error {
	c.once.Do(func() { time.AfterFunc(c.think, func() { c.Conn.Close() }) })
	return nil
}
