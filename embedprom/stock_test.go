package embedprom

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// stockBinary finds a program of Debian's prometheus package; CI installs it, elsewhere the test is skipped.
func stockBinary(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed; .ci/run installs Debian's prometheus package", name)
		}
		t.Skipf("%s not installed (apt-get install prometheus)", name)
	}
	return path
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("copy: %v %s", err, out)
	}
}

// The TSDB the embedded server leaves behind opens in a stock Prometheus, which returns the same numbers.
func TestStockPrometheusReadsTheTSDB(t *testing.T) {
	promtool, server := stockBinary(t, "promtool"), stockBinary(t, "prometheus")
	dir := filepath.Join(t.TempDir(), "tsdb")
	prom, err := Start(Options{Dir: dir, ScrapeInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	counter := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rolloutlab_requests_total", Help: "test"}, []string{"error"})
	reg.MustRegister(counter)
	counter.WithLabelValues("none").Add(24060)
	counter.WithLabelValues("refused").Add(42)
	if err := prom.SetTargets("attacker", []Target{{Address: exporter(t, reg)}}); err != nil {
		t.Fatal(err)
	}
	if err := prom.WaitForScrape(context.Background(), "attacker", time.Now()); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	api, _ := prom.Client()
	embedded := instant(t, api, `sum(rolloutlab_requests_total)`, at)
	if err := prom.Close(); err != nil {
		t.Fatal(err)
	}

	copy1, copy2 := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	copyDir(t, dir, copy1)
	copyDir(t, dir, copy2)
	if out, err := exec.Command(promtool, "tsdb", "list", copy1).CombinedOutput(); err != nil {
		t.Fatalf("promtool tsdb list: %v\n%s", err, out)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	config := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(config, []byte("global: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(server, "--config.file="+config, "--storage.tsdb.path="+copy2, "--web.listen-address="+addr,
		"--enable-feature=native-histograms", "--log.level=warn")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	query := fmt.Sprintf("http://%s/api/v1/query?query=%s&time=%.3f", addr, url.QueryEscape(`sum(rolloutlab_requests_total)`), float64(at.UnixMilli())/1000)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(query)
		if err == nil {
			var body struct {
				Status string
				Data   struct {
					Result []struct {
						Value [2]any
					}
				}
			}
			decodeErr := json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if decodeErr == nil && resp.StatusCode == http.StatusOK && len(body.Data.Result) == 1 {
				if got := body.Data.Result[0].Value[1]; got != fmt.Sprint(embedded) || embedded != 24102 {
					t.Errorf("stock Prometheus says %v, the embedded one %v (want 24102)", got, embedded)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stock Prometheus did not answer: %v\n%s", err, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
