package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rollout-lab/rollout-lab/cowweb/app"
	"github.com/rollout-lab/rollout-lab/embedprom"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// startCowweb runs the real cowweb server in this process on a loopback port.
func startCowweb(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv := app.NewServer(app.Config{Slow: true, Load: 100, Shutdown: app.ShutdownGraceful}, slog.New(slog.NewTextHandler(io.Discard, nil)), reg, reg)
	terminate := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln, terminate) }()
	t.Cleanup(func() {
		close(terminate)
		<-done
	})
	return "http://" + ln.Addr().String()
}

func onlyDir(t *testing.T, pattern string) string {
	t.Helper()
	dirs, _ := filepath.Glob(pattern)
	if len(dirs) != 1 {
		t.Fatalf("%s: %v", pattern, dirs)
	}
	return dirs[0]
}

func TestAttackThenReportFromTheStoredTSDB(t *testing.T) {
	url := startCowweb(t)
	root := t.TempDir()
	code, out, errOut := run(t, "attack", "--url", url+"/say?m=hi", "--start-rate", "20", "--stages", "1s:80,1s:20",
		"--results", root, "--scrape-interval", "250ms")
	if code != ExitOK {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	// (20+80)/2 + (80+20)/2 = 100 requests.
	for _, want := range []string{"sent 100 of 100 planned", "completed 100: 100 ok", "Prometheus: 100 requests, 100 2xx, error rate 0.00%"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	dir := onlyDir(t, filepath.Join(root, "attack", "*"))
	m, err := rundir.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Partial || len(m.Runs) != 1 || m.Runs[0].Summary.Completed != 100 || m.Provenance.Version == "" {
		t.Errorf("manifest: partial %v runs %+v", m.Partial, m.Runs)
	}
	if info, err := os.Stat(filepath.Join(dir, rundir.TokenFile)); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v %v", info, err)
	}
	before := map[string][]byte{}
	for _, name := range []string{"report.md", "report.en.md", "report.csv", "report.json"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		before[name] = data
		os.Remove(filepath.Join(dir, name))
	}
	if !bytes.Contains(before["report.md"], []byte("| 総リクエスト数 | 100 |")) || !bytes.Contains(before["report.md"], []byte("| レプリカ数 | - |")) {
		t.Errorf("report.md:\n%s", before["report.md"])
	}
	os.RemoveAll(filepath.Join(dir, "charts"))

	code, out, errOut = run(t, "report", dir)
	if code != ExitOK {
		t.Fatalf("report: exit %d\n%s\n%s", code, out, errOut)
	}
	for name, want := range before {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s regenerated differently (%v):\n%s\nwas\n%s", name, err, got, want)
		}
	}
	charts, _ := filepath.Glob(filepath.Join(dir, "charts", "*"))
	if len(charts) != 4 {
		t.Errorf("charts: %v", charts)
	}
}

func TestInterruptedAttackKeepsPartialResults(t *testing.T) {
	url := startCowweb(t)
	root := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var out, errOut bytes.Buffer
	code := Main(ctx, []string{"attack", "--url", url + "/say", "--rate", "50", "--duration", "60s", "--results", root, "--scrape-interval", "250ms"},
		Streams{Out: &out, Err: &errOut})
	if code == ExitOK || !strings.Contains(errOut.String(), "interrupted") {
		t.Errorf("exit %d: %s", code, errOut.String())
	}
	dir := onlyDir(t, filepath.Join(root, "attack", "*"))
	m, err := rundir.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	sent := m.Runs[0].Summary.Sent
	if !m.Partial || sent < 20 || sent > 100 || m.Runs[0].Summary.Completed != sent {
		t.Errorf("partial %v, sent %d completed %d", m.Partial, sent, m.Runs[0].Summary.Completed)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil || !bytes.Contains(md, []byte("途中で中断")) {
		t.Errorf("report.md of the partial run: %v\n%s", err, md)
	}
}

func TestAttackRejectsBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"attack", "--rate", "5", "--duration", "1s"}, "--url is required"},
		{[]string{"attack", "--url", "http://127.0.0.1:1", "--rate", "0", "--duration", "1s"}, "command line:4:9: load.rate: must be more than 0"},
		{[]string{"attack", "--url", "http://127.0.0.1:1", "--stages", "5s"}, `--stages: "5s" is not DURATION:TARGET`},
		{[]string{"attack", "--url", "http://127.0.0.1:1", "--plan", "../../plans/quick.yaml"}, "--case is required with --plan; cases of ../../plans/quick.yaml: gs, gs-slp3"},
		{[]string{"attack", "--url", "http://127.0.0.1:1", "--plan", "../../plans/quick.yaml", "--case", "nope"}, `plan quick has no case "nope"`},
		{[]string{"report", t.TempDir()}, "is not a results directory"},
	} {
		code, _, errOut := run(t, c.args...)
		if code != ExitError || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", c.args, code, errOut, c.want)
		}
	}
}

// With --prometheus-url the same queries go to an external Prometheus that scrapes the runner's metrics address.
func TestAttackWithAnExternalPrometheus(t *testing.T) {
	url := startCowweb(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := ln.Addr().String()
	ln.Close()
	external, err := embedprom.Start(embedprom.Options{Dir: t.TempDir(), ScrapeInterval: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer external.Close()
	if err := external.SetTargets("runner", []embedprom.Target{{Address: metricsAddr}}); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := external.WriteToken(tokenFile); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	code, out, errOut := run(t, "attack", "--url", url+"/say", "--rate", "40", "--duration", "2s", "--results", root,
		"--metrics-listen", metricsAddr, "--scrape-interval", "250ms", "--prometheus-url", external.URL(), "--prometheus-token-file", tokenFile)
	if code != ExitOK || !strings.Contains(out, "Prometheus: 80 requests, 80 2xx") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	dir := onlyDir(t, filepath.Join(root, "attack", "*"))
	if _, err := os.Stat(filepath.Join(dir, rundir.TSDBDir)); !os.IsNotExist(err) {
		t.Errorf("an embedded TSDB was written although Prometheus is external: %v", err)
	}
	if code, out, errOut := run(t, "report", dir, "--prometheus-token-file", tokenFile); code != ExitOK {
		t.Errorf("report from the external Prometheus: %d %s %s", code, out, errOut)
	}
}
