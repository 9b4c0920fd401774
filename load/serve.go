package load

import (
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServeMetrics serves reg on listen's /metrics (OpenMetrics when asked, for exemplars and created timestamps), with
// the Go runtime's and the process's collectors added: the runner's session and the in-cluster workers both serve
// their attacker's metrics this way. It returns the server and the address it listens on.
func ServeMetrics(listen string, reg *prometheus.Registry) (*http.Server, string, error) {
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, "", fmt.Errorf("serve metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, "", fmt.Errorf("serve metrics: %w", err)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, "", fmt.Errorf("serve metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, ln.Addr().String(), nil
}
