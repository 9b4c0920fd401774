// Command bench prints rollout-lab's performance figures side by side: `make bench` builds what it needs and runs it.
//
//  1. planned vs sent for a ramp/hold/ramp profile (goal: equal);
//  2. the highest rate `runner attack` sustains, with all its metrics and the embedded Prometheus, against plain
//     `vegeta attack` of the same version, on the same loopback servers (cowweb without and with --slow --load 640),
//     with pooled keep-alive connections and with a new connection per request (the reference loader's per-user
//     model; vegeta -keepalive=false);
//  3. the CPU seconds the embedded Prometheus spends per minute of load scraping every second, and on the queries;
//  4. the lab: start, 8 Pods Ready, stop, memory;
//  5. `runner apply plans/quick.yaml`: wall time minus the load time of its stages, per case;
//  7. the lab's load path: the highest per-user connection rate and the machine's CPU per connection through the
//     tcp balancer → a node's NodePort → kube-proxy's DNAT → a Pod, against user-space relays on the same hosts
//     (balancer → node → Pod: the path the lab had before it ran kube-proxy), in one run;
//  8. the lab's service-out, as runner calibrate measures a cluster's, against the background's size (0 to 10 000
//     other Services) in both kube-proxy modes.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"helm.sh/helm/v3/pkg/action"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/charts"
	"github.com/rollout-lab/rollout-lab/embedprom"
	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/lab/cgroups"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy"
	"github.com/rollout-lab/rollout-lab/lab/kubeproxy/proxymain"
	"github.com/rollout-lab/rollout-lab/lab/nsnet"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
)

func main() {
	runner := flag.String("runner", "bin/runner", "the runner binary")
	cowweb := flag.String("cowweb", "bin/cowweb", "the cowweb binary")
	vegeta := flag.String("vegeta", "vegeta", "the vegeta binary (v12.13.0)")
	step := flag.Duration("step", 3*time.Second, "length of each rate step")
	scrapeFor := flag.Duration("scrape-for", 30*time.Second, "how long to measure the embedded Prometheus")
	only := flag.Int("only", 0, "run one section alone: 2 (rates against vegeta), 4 (the lab's cost curve), 5 (the apply overhead), 6 (report times), 7 (load paths), 8 (service-out against background size); 0 runs all")
	reports := flag.String("reports", "", "comma-separated results directories whose `runner report` section 6 times")
	modes := flag.String("modes", kubeproxy.ModeNFTables+","+kubeproxy.ModeIPTables, "kube-proxy modes section 8 plays, comma-separated")
	flag.Parse()
	var reportDirs []string
	if *reports != "" {
		reportDirs = strings.Split(*reports, ",")
	}
	if err := run(*runner, *cowweb, *vegeta, *step, *scrapeFor, *only, reportDirs, strings.Split(*modes, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(runner, cowweb, vegeta string, step, scrapeFor time.Duration, only int, reportDirs, proxyModes []string) error {
	switch only {
	case 4:
		return costCurve(runner, cowweb)
	case 5:
		return applyOverhead(runner, "plans/quick.yaml")
	case 6:
		return reportTimes(runner, reportDirs)
	case 7:
		return loadPaths(runner, cowweb, step)
	case 8:
		return serviceOutBySize(runner, cowweb, proxyModes, backgroundSizes)
	case 0, 2:
	default:
		return fmt.Errorf("-only %d: sections 2, 4, 5, 6, 7 and 8 run alone", only)
	}
	if only == 0 {
		fmt.Println("== 1. planned vs sent (ramp 1→200/s over 5 s, hold 5 s, ramp 200→1/s over 5 s)")
		if err := plannedVsSent(); err != nil {
			return err
		}
	}
	fmt.Println("\n== 2. highest sustained rate: runner attack (all metrics, embedded Prometheus) vs vegeta attack v12.13.0")
	fmt.Printf("   each step %s; sustained = throughput ≥ 97%% of the rate with ≥ 99%% success\n", step)
	for _, target := range []struct {
		name       string
		args       []string
		connection string
		rates      []int
	}{
		{"cowweb (trivial /say), pooled keep-alive connections", nil, plan.ConnectionPooled, []int{1000, 2000, 4000, 6000, 8000, 10000, 12000, 15000}},
		{"cowweb --slow --load 640, pooled", []string{"--slow", "--load", "640"}, plan.ConnectionPooled, []int{25, 50, 75, 100, 150, 200, 300, 400}},
		// The reference experiment's loader: a new connection per arrival (runner per-user; vegeta -keepalive=false).
		{"cowweb (trivial /say), a connection per request", nil, plan.ConnectionPerUser, []int{1000, 2000, 4000, 6000, 8000, 10000, 12000, 15000, 20000}},
	} {
		if err := compareRates(runner, cowweb, vegeta, target.name, target.args, target.connection, target.rates, step); err != nil {
			return err
		}
	}
	if only == 2 {
		return nil
	}
	fmt.Println("\n== 3. embedded Prometheus overhead")
	if err := prometheusOverhead(scrapeFor); err != nil {
		return err
	}
	fmt.Println("\n== 4. the lab's cost curve: start, a Pod's process, 8 / 50 / 100 replicas Ready and rolled over, memory")
	if err := costCurve(runner, cowweb); err != nil {
		return err
	}
	fmt.Println("\n== 5. runner apply plans/quick.yaml: overhead per case (wall time minus the load's stages)")
	if err := applyOverhead(runner, "plans/quick.yaml"); err != nil {
		return err
	}
	fmt.Println("\n== 7. the lab's load path, a connection per request: kernel (balancer → NodePort → kube-proxy DNAT → Pod) vs user space (balancer relay → node relay → Pod)")
	if err := loadPaths(runner, cowweb, step); err != nil {
		return err
	}
	fmt.Println("\n== 8. service-out (runner calibrate's measurement) against the cluster's size: 0 to 10 000 background Services, both kube-proxy modes")
	if err := serviceOutBySize(runner, cowweb, proxyModes, backgroundSizes); err != nil {
		return err
	}
	if len(reportDirs) > 0 {
		fmt.Println("\n== 6. runner report: every report rewritten from a stored run")
		return reportTimes(runner, reportDirs)
	}
	return nil
}

// applyOverhead runs a whole plan as a user would and subtracts the time its load schedules take: what remains is
// the lab, installs, waits, scrapes and reports.
func applyOverhead(runner, planFile string) error {
	if os.Geteuid() != 0 {
		fmt.Println("   skipped: the lab needs root")
		return nil
	}
	p, err := plan.LoadFile(planFile)
	if err != nil {
		return err
	}
	var loadTime time.Duration
	for _, c := range p.Cases {
		loadTime += time.Duration(p.Repeats) * c.Load.TotalDuration()
	}
	results, err := os.MkdirTemp("", "rollout-lab-bench-apply")
	if err != nil {
		return err
	}
	defer os.RemoveAll(results)
	cmd := exec.Command(runner, "apply", planFile, "--results", results)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	// Exit code 3 is a broken expectation: the run itself completed.
	if exitErr, ok := err.(*exec.ExitError); err != nil && !(ok && exitErr.ExitCode() == 3) {
		return fmt.Errorf("runner apply %s: %w\n%s", planFile, err, out.String())
	}
	runs := len(p.Cases) * p.Repeats
	perCase := (wall - loadTime) / time.Duration(runs)
	fmt.Printf("   %d case run(s): wall %s, load stages %s → overhead %s per case (goal ≤ 8 s)\n",
		runs, wall.Round(time.Millisecond), loadTime, perCase.Round(time.Millisecond))
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		// The runner's own process: the lab's control plane, the load, the embedded Prometheus; Pods are apart.
		fmt.Printf("   peak RSS of runner apply (lab, load and Prometheus in one process): %d MiB\n", ru.Maxrss/1024)
	}
	return nil
}

// costCurve measures what the lab costs as it grows: its start, a cowweb Pod's own process (memory at idle, exec →
// listening), and Deployments of 8, 50 and 100 replicas (readiness delay 1 s) from helm install to all Ready and
// through a rollout restart, each against its floor, with the memory of this process (the lab) and of the Pods.
func costCurve(runner, cowweb string) error {
	if os.Geteuid() != 0 {
		fmt.Println("   skipped: the lab needs root")
		return nil
	}
	cowwebPath, err := filepath.Abs(cowweb)
	if err != nil {
		return err
	}
	for _, program := range []struct {
		name string
		argv []string
	}{{"bin/cowweb", []string{cowwebPath}}, {"runner cowweb", []string{runner, "cowweb"}}} {
		started, rss, err := podProcess(program.argv)
		if err != nil {
			return err
		}
		fmt.Printf("   a Pod's process, %s: exec → listening %s, RSS at idle %.1f MiB\n", program.name, started.Round(time.Millisecond), rss)
	}
	dir, err := os.MkdirTemp("", "rollout-lab-bench-lab")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	start := time.Now()
	l, err := lab.Up(ctx, lab.Options{Dir: dir, Nodes: 3, Cowweb: []string{cowwebPath}, KubeProxyCommand: kubeProxyCommand(runner)})
	if err != nil {
		return err
	}
	up := time.Since(start)
	for node, rss := range l.Proxies.RSS() {
		fmt.Printf("   kube-proxy on %s: RSS %.0f MiB\n", node, float64(rss)/(1<<20))
	}
	stopped := false
	defer func() {
		if !stopped {
			l.Down()
		}
	}()
	fmt.Printf("   lab up: API ready %s (goal < 10 s), 3 Nodes Ready %s\n", l.APIReadyAfter.Round(time.Millisecond), up.Round(time.Millisecond))
	cfg, err := experiment.HelmConfiguration(l.Kubeconfig, "", "default", slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	const readinessDelay = time.Second
	fmt.Println("   replicas  all Ready after helm install (floor 1 s)  rollout restart → complete (floor)  lab RSS   Pods' RSS (per Pod)")
	for _, replicas := range []int{8, 50, 100} {
		if err := rollOver(ctx, l, cfg, replicas, readinessDelay); err != nil {
			return err
		}
	}
	stopStart := time.Now()
	if err := l.Down(); err != nil {
		return err
	}
	stopped = true
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	fmt.Printf("   stop: %s; peak RSS of the lab's process: %d MiB\n", time.Since(stopStart).Round(time.Millisecond), ru.Maxrss/1024)
	return nil
}

// rollOver installs cowweb with replicas Pods, times them Ready and a rollout restart through to its end, prints
// the figures with the lab's and the Pods' memory, and uninstalls it.
func rollOver(ctx context.Context, l *lab.Lab, cfg *action.Configuration, replicas int, readinessDelay time.Duration) error {
	p, err := plan.Parse("bench", []byte(fmt.Sprintf("name: bench\nload: {rate: 1, duration: 1s}\napp:\n  replicas: %d\n  slow: false\n  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}\n  values: {service: {type: ClusterIP}}\n", replicas)))
	if err != nil {
		return err
	}
	installStart := time.Now()
	// Helm's --wait polls every 2 s; a watch of its own times the moment the last Pod turned Ready.
	allReady := readyAt(ctx, l.Client, "default", replicas)
	if _, err := experiment.InstallCowweb(ctx, cfg, "default", charts.CowwebValues(p.Cases[0].App)); err != nil {
		return err
	}
	ready := (<-allReady).Sub(installStart)
	pods, podRSS, err := podsRSS(ctx, l, "default")
	if err != nil {
		return err
	}
	restartStart := time.Now()
	if err := experiment.RestartDeployment(ctx, l.Client, "default", experiment.ReleaseName); err != nil {
		return err
	}
	if err := experiment.WaitRolledOut(ctx, l.Client, "default", experiment.ReleaseName, 10*time.Minute); err != nil {
		return err
	}
	rollout := time.Since(restartStart)
	// maxSurge 25 % (rounded up) and maxUnavailable 25 % (rounded down): each wave replaces that many Pods and
	// waits one readiness delay.
	perWave := (replicas+3)/4 + replicas/4
	floor := time.Duration((replicas+perWave-1)/perWave) * readinessDelay
	fmt.Printf("   %8d  %10s (+%s)                %10s (floor %s)              %5.0f MiB  %6.0f MiB (%.1f MiB, %d Pods)\n", replicas,
		ready.Round(time.Millisecond), (ready - readinessDelay).Round(time.Millisecond), rollout.Round(time.Millisecond), floor,
		rssMiB(os.Getpid()), podRSS, podRSS/float64(max(pods, 1)), pods)
	uninstall := action.NewUninstall(cfg)
	uninstall.Wait, uninstall.Timeout = true, 5*time.Minute
	if _, err := uninstall.Run(experiment.ReleaseName); err != nil {
		return err
	}
	return nil
}

// readyAt reports when namespace first has want Ready Pods, polling every 20 ms.
func readyAt(ctx context.Context, client kubernetes.Interface, namespace string, want int) <-chan time.Time {
	at := make(chan time.Time, 1)
	go func() {
		for {
			pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
			if err == nil {
				ready := 0
				for _, p := range pods.Items {
					for _, c := range p.Status.Conditions {
						if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
							ready++
						}
					}
				}
				if ready >= want {
					at <- time.Now()
					return
				}
			}
			select {
			case <-ctx.Done():
				at <- time.Now()
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return at
}

// podProcess starts a cowweb as a lab Pod's process would run it, times exec → accepting connections, and reads
// its RSS once it has served a request and settled.
func podProcess(argv []string) (time.Duration, float64, error) {
	p, err := startCowweb(argv, nil)
	if err != nil {
		return 0, 0, err
	}
	defer p.stop()
	resp, err := http.Get(p.url)
	if err != nil {
		return 0, 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	time.Sleep(time.Second)
	return p.started, rssMiB(p.pid), nil
}

// podsRSS sums the resident memory of the cowweb containers of a namespace's Pods.
func podsRSS(ctx context.Context, l *lab.Lab, namespace string) (int, float64, error) {
	pods, err := l.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, 0, err
	}
	n, sum := 0, 0.0
	for _, pod := range pods.Items {
		if pid, ok := l.Agent.ContainerPID(pod.UID, "cowweb"); ok {
			n++
			sum += rssMiB(pid)
		}
	}
	return n, sum, nil
}

// rssMiB is a process's resident set (VmRSS) in MiB, 0 when it cannot be read.
func rssMiB(pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// reportTimes times `runner report` on stored results directories: the reports rewritten from the TSDB alone.
func reportTimes(runner string, dirs []string) error {
	for _, dir := range dirs {
		start := time.Now()
		out, err := exec.Command(runner, "report", dir).CombinedOutput()
		if err != nil {
			return fmt.Errorf("runner report %s: %w\n%s", dir, err, out)
		}
		size := func(path string) int64 {
			var total int64
			_ = filepath.Walk(path, func(_ string, info os.FileInfo, err error) error {
				if err == nil && !info.IsDir() {
					total += info.Size()
				}
				return nil
			})
			return total
		}
		html, _ := os.Stat(filepath.Join(dir, "report.html"))
		var htmlSize int64
		if html != nil {
			htmlSize = html.Size()
		}
		fmt.Printf("   %s: %s (TSDB %.1f MiB, results directory %.1f MiB, report.html %.0f KiB)\n", dir, time.Since(start).Round(time.Millisecond),
			float64(size(filepath.Join(dir, "tsdb")))/(1<<20), float64(size(dir))/(1<<20), float64(htmlSize)/1024)
	}
	return nil
}

func plannedVsSent() error {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	l := plan.Load{StartRate: 1, Stages: []plan.Stage{{Duration: plan.Duration(5 * time.Second), Target: 200},
		{Duration: plan.Duration(5 * time.Second), Target: 200}, {Duration: plan.Duration(5 * time.Second), Target: 1}}}
	opts, err := load.OptionsFromPlan(srv.URL, l, load.Labels{Plan: "bench", Case: "ramp", Run: "1"})
	if err != nil {
		return err
	}
	opts.Timeout, opts.Connection, opts.Connections, opts.Workers = 5*time.Second, plan.ConnectionPooled, 100, 10
	s, err := load.Attack(context.Background(), opts, load.NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		return err
	}
	verdict := "EQUAL"
	if s.Sent != uint64(l.Requests()) || s.Completed != s.Sent {
		verdict = "DIFFERENT"
	}
	fmt.Printf("   planned %d (plan) / %d (pacer), sent %d, completed %d in %s: %s\n", l.Requests(), s.Planned, s.Sent, s.Completed,
		s.End.Sub(s.Start).Round(time.Millisecond), verdict)
	return nil
}

// startCowweb runs the cowweb binary on a free loopback port.
// cowwebProcess is a cowweb the bench started on a loopback port.
type cowwebProcess struct {
	url     string        // its /say URL
	pid     int           // its process
	started time.Duration // exec → accepting connections
	stop    func()
}

// startCowweb runs argv (a cowweb binary, or the runner with its cowweb subcommand) serving on a free loopback
// port, and returns once it accepts connections.
func startCowweb(argv, args []string) (cowwebProcess, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return cowwebProcess{}, err
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(argv[0], append(append(argv[1:len(argv):len(argv)], "serve", "--listen", addr), args...)...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return cowwebProcess{}, err
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	for time.Since(start) < 30*time.Second {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return cowwebProcess{url: "http://" + addr + "/say?m=bench", pid: cmd.Process.Pid, started: time.Since(start), stop: stop}, nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	stop()
	return cowwebProcess{}, fmt.Errorf("%v did not start on %s", argv, addr)
}

type stepResult struct {
	throughput, success float64
}

func (r stepResult) sustained(rate int) bool {
	return r.throughput >= 0.97*float64(rate) && r.success >= 0.99
}

var runnerSummary = regexp.MustCompile(`sent (\d+) of (\d+) planned in ([^;]+); completed (\d+): (\d+) ok`)

func runnerStep(runner, url, connection string, rate int, step time.Duration, results string) (stepResult, error) {
	out, err := exec.Command(runner, "attack", "--url", url, "--rate", strconv.Itoa(rate), "--duration", step.String(),
		"--timeout", "5s", "--connection", connection, "--results", results).Output()
	m := runnerSummary.FindStringSubmatch(string(out))
	if m == nil {
		return stepResult{}, fmt.Errorf("runner attack at %d/s: %v\n%s", rate, err, out)
	}
	planned, _ := strconv.ParseFloat(m[2], 64)
	elapsed, _ := time.ParseDuration(m[3])
	ok, _ := strconv.ParseFloat(m[5], 64)
	return stepResult{throughput: ok / elapsed.Seconds(), success: ok / planned}, nil
}

func vegetaStep(vegeta, url, connection string, rate int, step time.Duration) (stepResult, error) {
	attack := exec.Command(vegeta, "attack", "-rate", strconv.Itoa(rate), "-duration", step.String(), "-timeout", "5s",
		"-keepalive="+strconv.FormatBool(connection == plan.ConnectionPooled))
	attack.Stdin = strings.NewReader("GET " + url + "\n")
	report := exec.Command(vegeta, "report", "-type", "json")
	pipe, err := attack.StdoutPipe()
	if err != nil {
		return stepResult{}, err
	}
	report.Stdin = pipe
	var out strings.Builder
	report.Stdout = &out
	if err := report.Start(); err != nil {
		return stepResult{}, err
	}
	if err := attack.Run(); err != nil {
		return stepResult{}, fmt.Errorf("vegeta attack: %w", err)
	}
	if err := report.Wait(); err != nil {
		return stepResult{}, fmt.Errorf("vegeta report: %w", err)
	}
	var r struct {
		Throughput float64 `json:"throughput"`
		Success    float64 `json:"success"`
	}
	if err := json.Unmarshal([]byte(out.String()), &r); err != nil {
		return stepResult{}, fmt.Errorf("vegeta report: %w: %s", err, out.String())
	}
	return stepResult{throughput: r.Throughput, success: r.Success}, nil
}

func compareRates(runner, cowweb, vegeta, name string, args []string, connection string, rates []int, step time.Duration) error {
	p, err := startCowweb([]string{cowweb}, args)
	if err != nil {
		return err
	}
	defer p.stop()
	results, err := os.MkdirTemp("", "rollout-lab-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(results)
	fmt.Printf("   %s\n   %8s  %22s  %22s\n", name, "rate/s", "runner thr/s (ok %)", "vegeta thr/s (ok %)")
	// Highest sustained counts only an unbroken run of sustained steps from the lowest rate.
	bestRunner, bestVegeta := 0, 0
	runnerBroke, vegetaBroke := false, false
	for _, rate := range rates {
		r, err := runnerStep(runner, p.url, connection, rate, step, results)
		if err != nil {
			return err
		}
		v, err := vegetaStep(vegeta, p.url, connection, rate, step)
		if err != nil {
			return err
		}
		mark := func(s stepResult) string {
			if s.sustained(rate) {
				return " "
			}
			return "✗"
		}
		fmt.Printf("   %8d  %14.0f (%5.1f)%s  %14.0f (%5.1f)%s\n", rate, r.throughput, r.success*100, mark(r), v.throughput, v.success*100, mark(v))
		runnerBroke = runnerBroke || !r.sustained(rate)
		vegetaBroke = vegetaBroke || !v.sustained(rate)
		if !runnerBroke {
			bestRunner = rate
		}
		if !vegetaBroke {
			bestVegeta = rate
		}
		if runnerBroke && vegetaBroke {
			break
		}
	}
	ratio := 0.0
	if bestVegeta > 0 {
		ratio = float64(bestRunner) / float64(bestVegeta)
	}
	fmt.Printf("   highest sustained: runner %d/s, vegeta %d/s, ratio %.2f (goal ≥ 0.95)\n\n", bestRunner, bestVegeta, ratio)
	return nil
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// prometheusOverhead scrapes the series of a three-case run every second and runs the report queries, in this
// process with nothing else running, and reports the CPU this costs.
func prometheusOverhead(scrapeFor time.Duration) error {
	reg := prometheus.NewRegistry()
	m := load.NewMetrics(reg)
	cases := []string{"cowweb-ru-gs", "cowweb-ru-gs-slp5", "cowweb-ru-gs-slp8"}
	start := time.Now()
	for _, c := range cases {
		l := load.Labels{Plan: "bench", Case: c, Run: "1"}
		m.MarkPhase(l, load.PhaseLoadStart, start)
		for i, class := range load.Classes {
			for j := 0; j < 1000; j++ {
				m.Requests.WithLabelValues(l.Plan, l.Case, l.Run, load.CodeLabel(200), class).Inc()
				m.Latency.WithLabelValues(l.Plan, l.Case, l.Run, class).Observe(float64(j%200+i) / 1000)
			}
		}
		m.Sent.WithLabelValues(l.Plan, l.Case, l.Run).Add(8000)
	}
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	dir, err := os.MkdirTemp("", "rollout-lab-bench-tsdb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	prom, err := embedprom.Start(embedprom.Options{Dir: filepath.Join(dir, "tsdb"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	defer prom.Close()
	before := cpuSeconds()
	if err := prom.SetTargets("bench", []embedprom.Target{{Address: strings.TrimPrefix(srv.URL, "http://")}}); err != nil {
		return err
	}
	time.Sleep(scrapeFor)
	scrapeCPU := cpuSeconds() - before
	series, _ := countSeries(srv.URL)
	fmt.Printf("   scraping %d series every 1 s for %s: %.3f CPU s, %.3f CPU s per minute of load (exporter side included)\n",
		series, scrapeFor, scrapeCPU, scrapeCPU*float64(time.Minute)/float64(scrapeFor))
	for _, c := range cases {
		m.MarkPhase(load.Labels{Plan: "bench", Case: c, Run: "1"}, load.PhaseLoadEnd, time.Now())
	}
	if err := prom.WaitForScrape(context.Background(), "bench", time.Now()); err != nil {
		return err
	}
	api, err := prom.Client()
	if err != nil {
		return err
	}
	before = cpuSeconds()
	queryStart := time.Now()
	for _, c := range cases {
		if _, err := analysis.Analyze(context.Background(), api, analysis.Selector{Plan: "bench", Case: c, Run: "1"}, analysis.Conditions{}, analysis.Options{}); err != nil {
			return err
		}
	}
	fmt.Printf("   report queries for %d cases over %s of data: %.3f CPU s, %s wall\n", len(cases), scrapeFor, cpuSeconds()-before,
		time.Since(queryStart).Round(time.Millisecond))
	return nil
}

func countSeries(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n := 0
	scanner := bufio.NewScanner(io.LimitReader(resp.Body, 64<<20))
	for scanner.Scan() {
		if line := scanner.Text(); line != "" && !strings.HasPrefix(line, "#") {
			n++
		}
	}
	return n, scanner.Err()
}

// kubeProxyCommand runs the nodes' kube-proxies as the runner binary does.
func kubeProxyCommand(runner string) []string {
	abs, err := filepath.Abs(runner)
	if err != nil {
		abs = runner
	}
	return []string{abs, proxymain.Subcommand}
}

// loadPaths measures, in one lab, the highest rate of new connections (one request each, trivial handler) the
// lab's load path holds, and what each connection costs the machine: through the tcp balancer, a node's NodePort
// and kube-proxy's DNAT to a Pod (the kernel path), and through two user-space relays — one on the load balancer's
// host, one on each node, as the balancer and the node proxy the lab had before it ran kube-proxy, and as
// kube-proxy's old userspace mode — that each dial the next hop and copy both ways (the user-space path). Both
// paths enter at an address of the lab's node network from the host, leave the same hosts' namespaces and end at
// the same Pods, so they share every limit but the one compared. Every connection leaves a TIME_WAIT for 60 s in
// the namespace that closed it, and a namespace has ~28 000 ports per destination: before each step the bench
// waits until the step's connections fit, so neither path meets that wall (a cluster's clients, balancers and
// nodes are other hosts with ranges of their own).
func loadPaths(runner, cowweb string, step time.Duration) error {
	if os.Geteuid() != 0 {
		fmt.Println("   skipped: the lab needs root")
		return nil
	}
	l, ingress, podAddrs, stop, err := benchLab(runner, cowweb)
	if err != nil {
		return err
	}
	defer stop()
	var nodeRelays []string
	for _, n := range l.Proxies.Nodes() {
		ns, _ := l.Network.NodeNamespace(n.Name)
		relay, err := userSpaceRelay(ns, n.IP, podAddrs)
		if err != nil {
			return err
		}
		defer relay.Close()
		nodeRelays = append(nodeRelays, relay.Addr().String())
	}
	balancerRelay, err := userSpaceRelay(l.Network.BalancerNamespace(), l.Network.BalancerIP(), nodeRelays)
	if err != nil {
		return err
	}
	defer balancerRelay.Close()
	results, err := os.MkdirTemp("", "rollout-lab-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(results)
	namespaces := []string{"", l.Network.BalancerNamespace()}
	for _, n := range l.Proxies.Nodes() {
		ns, _ := l.Network.NodeNamespace(n.Name)
		namespaces = append(namespaces, ns)
	}
	paths := []benchPath{
		{name: "kernel", url: fmt.Sprintf("http://%s/say?m=bench", net.JoinHostPort(ingress.String(), "80"))},
		{name: "user space", url: "http://" + balancerRelay.Addr().String() + "/say?m=bench"},
		// No path at all: the host straight to one Pod. What the other two cost beyond it is what their path adds.
		{name: "direct to a Pod", url: "http://" + podAddrs[0] + "/say?m=bench"},
	}
	return pathLadder(runner, paths, namespaces, step, results)
}

type benchPath struct {
	name, url string
	best      int
	// cpuPerConn is the machine's CPU time per completed request, beyond its idle use, at each sustained rate.
	cpuPerConn map[int]float64
	broke      bool
}

// pathLadder climbs the rates on every path in turn, each step after the TIME_WAIT states of earlier ones left room,
// and prints what each path costs the machine per connection beyond a connection straight to a Pod.
func pathLadder(runner string, paths []benchPath, namespaces []string, step time.Duration, results string) error {
	fmt.Printf("   %8s", "rate/s")
	for _, p := range paths {
		fmt.Printf("  %36s", p.name+": thr/s (ok %) CPU ms/conn")
	}
	fmt.Println()
	// What the lab and the machine spend with no load (control plane, kube-proxies, Prometheus), taken off each
	// step so that the figure is what a connection adds.
	idleBefore, idleStart := cgroups.MachineBusySeconds(), time.Now()
	time.Sleep(5 * time.Second)
	idlePerSecond := (cgroups.MachineBusySeconds() - idleBefore) / time.Since(idleStart).Seconds()
	fmt.Printf("   (idle: the machine busy %.2f CPU-s/s, taken off each step)\n", idlePerSecond)
	allHeld := 0
	for _, rate := range []int{500, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 8000} {
		line := fmt.Sprintf("   %8d", rate)
		held := true
		for i := range paths {
			p := &paths[i]
			if p.broke {
				line += fmt.Sprintf("  %36s", "-")
				held = false
				continue
			}
			if err := awaitPortRoom(namespaces, int(float64(rate)*step.Seconds()*1.2)); err != nil {
				return err
			}
			busyBefore, stepStart := cgroups.MachineBusySeconds(), time.Now()
			r, err := runnerStep(runner, p.url, plan.ConnectionPerUser, rate, step, results)
			if err != nil {
				return err
			}
			elapsed := time.Since(stepStart).Seconds()
			perConn := (cgroups.MachineBusySeconds() - busyBefore - idlePerSecond*elapsed) / (r.throughput * step.Seconds()) * 1000
			mark := " "
			if !r.sustained(rate) {
				mark, p.broke, held = "✗", true, false
			} else {
				p.best = rate
				if p.cpuPerConn == nil {
					p.cpuPerConn = map[int]float64{}
				}
				p.cpuPerConn[rate] = perConn
			}
			line += fmt.Sprintf("  %14.0f (%5.1f)%s %13.3f", r.throughput, r.success*100, mark, perConn)
		}
		fmt.Println(line)
		if held {
			allHeld = rate
		}
		if paths[0].broke && paths[1].broke && paths[2].broke {
			break
		}
	}
	kernel, user, direct := paths[0], paths[1], paths[2]
	ratio := 0.0
	if user.best > 0 {
		ratio = float64(kernel.best) / float64(user.best)
	}
	fmt.Printf("   highest sustained: kernel path %d/s, user-space path %d/s, ratio %.2f (direct to a Pod %d/s)\n", kernel.best, user.best, ratio, direct.best)
	if allHeld > 0 {
		k, u, d := kernel.cpuPerConn[allHeld], user.cpuPerConn[allHeld], direct.cpuPerConn[allHeld]
		fmt.Printf("   machine CPU per connection at %d/s (all held): kernel %.3f ms, user space %.3f ms, direct %.3f ms\n", allHeld, k, u, d)
		fmt.Printf("   what the path adds per connection: kernel %.3f ms, user space %.3f ms, ratio %.2f\n", k-d, u-d, (k-d)/(u-d))
	}
	return nil
}

// benchLab starts a 2-node lab with 2 trivial cowweb Pods behind a LoadBalancer Service and returns it, the
// Service's ingress address, the Pods' addresses and how to stop it all.
func benchLab(runner, cowweb string) (*lab.Lab, net.IP, []string, func(), error) {
	cowwebPath, err := filepath.Abs(cowweb)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	dir, err := os.MkdirTemp("", "rollout-lab-bench-path")
	if err != nil {
		return nil, nil, nil, nil, err
	}
	ctx := context.Background()
	l, err := lab.Up(ctx, lab.Options{Dir: dir, Nodes: 2, Cowweb: []string{cowwebPath}, KubeProxyCommand: kubeProxyCommand(runner)})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, nil, err
	}
	stop := func() { l.Down(); os.RemoveAll(dir) }
	fail := func(err error) (*lab.Lab, net.IP, []string, func(), error) { stop(); return nil, nil, nil, nil, err }
	cfg, err := experiment.HelmConfiguration(l.Kubeconfig, "", "default", slog.New(slog.DiscardHandler))
	if err != nil {
		return fail(err)
	}
	p, err := plan.Parse("bench", []byte("name: bench\nload: {rate: 1, duration: 1s}\napp:\n  replicas: 2\n  slow: false\n  probes: {readiness: {initialDelay: 1s}, liveness: {initialDelay: 1s}}\n"))
	if err != nil {
		return fail(err)
	}
	allReady := readyAt(ctx, l.Client, "default", 2)
	if _, err := experiment.InstallCowweb(ctx, cfg, "default", charts.CowwebValues(p.Cases[0].App)); err != nil {
		return fail(err)
	}
	<-allReady
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := l.Proxies.WaitProgrammed(waitCtx, "default", experiment.ReleaseName, 2); err != nil {
		return fail(err)
	}
	var ingress net.IP
	for start := time.Now(); ingress == nil; time.Sleep(50 * time.Millisecond) {
		ingress, _ = l.Balancers.Ingress("default", experiment.ReleaseName)
		if time.Since(start) > time.Minute {
			return fail(fmt.Errorf("no load balancer for the bench's Service"))
		}
	}
	pods, err := l.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fail(err)
	}
	var podAddrs []string
	for _, pod := range pods.Items {
		podAddrs = append(podAddrs, net.JoinHostPort(pod.Status.PodIP, "8080"))
	}
	return l, ingress, podAddrs, stop, nil
}

// awaitPortRoom waits (at most 70 s: TIME_WAIT lasts 60 s) until no namespace holds so many TIME_WAIT sockets that
// the next step's connections could run out of source ports.
func awaitPortRoom(namespaces []string, next int) error {
	const ports = 28000 // net.ipv4.ip_local_port_range's default 32768–60999
	deadline := time.Now().Add(70 * time.Second)
	for {
		most := 0
		for _, ns := range namespaces {
			tw, err := timeWaitSockets(ns)
			if err != nil {
				return err
			}
			most = max(most, tw)
		}
		if most+next <= ports || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(time.Second)
	}
}

// timeWaitSockets reads the namespace's TIME_WAIT count from its /proc/net/sockstat ("TCP: inuse … tw N …").
func timeWaitSockets(ns string) (int, error) {
	cmd := exec.Command("cat", "/proc/net/sockstat")
	if ns != "" {
		cmd = exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/sockstat")
	}
	out, err := cmd.Output()
	if err != nil {
		return 0, fmt.Errorf("sockstat of namespace %q: %w", ns, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		for i := 0; len(fields) > 0 && fields[0] == "TCP:" && i+1 < len(fields); i++ {
			if fields[i] == "tw" {
				return strconv.Atoi(fields[i+1])
			}
		}
	}
	return 0, fmt.Errorf("no TCP tw in the sockstat of namespace %q", ns)
}

// userSpaceRelay listens on ip in namespace ns and relays each connection to the next backend (round robin) with
// two copies, as a user-space proxy does.
func userSpaceRelay(ns string, ip net.IP, backends []string) (net.Listener, error) {
	ln, err := nsnet.Listen(ns, "tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		return nil, err
	}
	next := 0
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			backend := backends[next%len(backends)]
			next++
			go func() {
				defer client.Close()
				upstream, err := nsnet.Dial(context.Background(), ns, dialer, "tcp", backend)
				if err != nil {
					return
				}
				defer upstream.Close()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(upstream, client); done <- struct{}{} }()
				go func() { _, _ = io.Copy(client, upstream); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln, nil
}
