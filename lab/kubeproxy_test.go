package lab

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
)

// askSay sends one GET /say on conn and tells whether a 200 came back; it closes conn.
func askSay(conn net.Conn) bool {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /say?m=hi HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// programming is what a node's kube-proxy says of its network programming latency
// (kubeproxy_network_programming_duration_seconds): observations, mean, and the upper bound of the bucket that
// holds the slowest.
type programming struct {
	count     uint64
	mean, max float64
}

func networkProgramming(t *testing.T, l *Lab, node string) programming {
	t.Helper()
	var ip net.IP
	for _, n := range l.Proxies.Nodes() {
		if n.Name == node {
			ip = n.IP
		}
	}
	resp, err := http.Get("http://" + net.JoinHostPort(ip.String(), strconv.Itoa(kubeproxy.MetricsPort)) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	family, ok := families["kubeproxy_network_programming_duration_seconds"]
	if !ok || len(family.Metric) == 0 {
		t.Fatalf("node %s: kube-proxy exports no network programming latency", node)
	}
	h := family.Metric[0].GetHistogram()
	p := programming{count: h.GetSampleCount(), max: math.Inf(1)}
	if p.count > 0 {
		p.mean = h.GetSampleSum() / float64(p.count)
	}
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() == p.count {
			p.max = b.GetUpperBound()
			break
		}
	}
	return p
}
