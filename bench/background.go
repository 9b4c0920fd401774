package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"helm.sh/helm/v3/pkg/action"

	"github.com/rollout-lab/rollout-lab/calibrate"
	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
)

// backgroundSizes are the clusters section 8 plays: Services besides the app's, two endpoints each.
var backgroundSizes = []int{0, 1000, 5000, 10000}

// serviceOutBySize measures, for each kube-proxy mode and background size, the lab's service-out as `runner
// calibrate` measures a cluster's (new connections through every node's NodePort while probe Pods are deleted one
// at a time), with kube-proxy's own sync time beside it: how much a cluster's size lengthens propagation when every
// node's kube-proxy programs it. One lab state directory per mode; each size adds to the last one's background.
func serviceOutBySize(runner, cowweb string, modes []string, sizes []int) error {
	if os.Geteuid() != 0 {
		fmt.Println("   skipped: the lab needs root")
		return nil
	}
	cowwebPath, err := filepath.Abs(cowweb)
	if err != nil {
		return err
	}
	fmt.Println("   | mode | background Services | made in | service-out p50 | p99 | max | kube-proxy sync p50 (s) | syncs |")
	fmt.Println("   |---|--:|--:|--:|--:|--:|--:|--:|")
	for _, mode := range modes {
		if err := kubeproxy.Preflight(mode); err != nil {
			return err
		}
		dir, err := os.MkdirTemp("", "rollout-lab-bench-background")
		if err != nil {
			return err
		}
		for _, size := range sizes {
			if err := serviceOutAt(runner, cowwebPath, dir, mode, size); err != nil {
				os.RemoveAll(dir)
				return fmt.Errorf("%s, %d Services: %w", mode, size, err)
			}
		}
		os.RemoveAll(dir)
	}
	return nil
}

func serviceOutAt(runner, cowwebPath, dir, mode string, size int) error {
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Options{Dir: dir, Nodes: 2, Cowweb: []string{cowwebPath}, KubeProxyCommand: kubeProxyCommand(runner),
		KubeProxy:  kubeproxy.Config{Mode: mode, MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second},
		Background: lab.Background{Services: size, EndpointsPerService: 2}})
	if err != nil {
		return err
	}
	defer l.Down()
	quiet := slog.New(slog.DiscardHandler)
	profile, err := calibrate.Run(ctx, calibrate.Config{Name: "bench", Client: l.Client, Deletions: 4, Hold: 30 * time.Second, Logger: quiet,
		Helm: func(ns string) (*action.Configuration, error) {
			return experiment.HelmConfiguration(l.Kubeconfig, "", ns, quiet)
		}})
	if err != nil {
		return err
	}
	syncP50, syncs := kubeProxySyncs(l.Proxies.Nodes()[0].IP)
	out := profile.ServiceOut.All
	fmt.Printf("   | %s | %d | %s | %s | %s | %s | %.3f | %d |\n", mode, size, l.BackgroundTook.Round(time.Second), out.P50, out.P99, out.Max, syncP50, syncs)
	return nil
}

// kubeProxySyncs reads a node's kube-proxy's kubeproxy_sync_proxy_rules_duration_seconds: the bucket bound below
// which half its syncs took, and how many there were.
func kubeProxySyncs(node net.IP) (float64, uint64) {
	resp, err := http.Get("http://" + net.JoinHostPort(node.String(), strconv.Itoa(kubeproxy.MetricsPort)) + "/metrics")
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return 0, 0
	}
	family, ok := families["kubeproxy_sync_proxy_rules_duration_seconds"]
	if !ok || len(family.Metric) == 0 {
		return 0, 0
	}
	h := family.Metric[0].GetHistogram()
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount()*2 >= h.GetSampleCount() {
			return b.GetUpperBound(), h.GetSampleCount()
		}
	}
	return 0, h.GetSampleCount()
}
