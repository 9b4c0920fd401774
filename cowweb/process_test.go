package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var cowwebBinary, upstreamBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cowweb-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cowwebBinary = filepath.Join(dir, "cowweb")
	build := exec.Command("go", "build", "-o", cowwebBinary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build cowweb:", err)
		os.Exit(1)
	}
	upstreamBinary = filepath.Join(dir, "cowweb-upstream")
	build = exec.Command("go", "build", "-ldflags", "-X github.com/rollout-lab/rollout-lab/cowweb/app.Flavor=upstream", "-o", upstreamBinary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build upstream-flavoured cowweb:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// process is a cowweb started from the built binary, its log events collected as they arrive.
type process struct {
	cmd    *exec.Cmd
	addr   string
	mu     sync.Mutex
	events []string
	done   chan struct{}
}

func startCowweb(t *testing.T, args ...string) *process {
	t.Helper()
	cmd := exec.Command(cowwebBinary, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	listening := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			var line struct {
				Event    string `json:"event"`
				Addr     string `json:"addr"`
				InFlight *int   `json:"in_flight"`
			}
			if err := json.Unmarshal(scanner.Bytes(), &line); err != nil {
				continue
			}
			p.mu.Lock()
			p.events = append(p.events, line.Event)
			if line.InFlight != nil {
				p.events = append(p.events, fmt.Sprintf("%s.in_flight=%d", line.Event, *line.InFlight))
			}
			p.mu.Unlock()
			if line.Event == "listening" {
				listening <- line.Addr
			}
		}
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	select {
	case p.addr = <-listening:
	case <-time.After(10 * time.Second):
		t.Fatal("cowweb did not log that it is listening")
	}
	return p
}

func (p *process) loggedEvents() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.events...)
}

func (p *process) waitExit(t *testing.T) *os.ProcessState {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState
	case <-time.After(20 * time.Second):
		t.Fatal("cowweb did not exit")
		return nil
	}
}

type outcome struct {
	code int
	err  error
	end  time.Time
}

// get sends one request on a new connection.
func (p *process) get(path string) outcome {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := client.Get("http://" + p.addr + path)
	if err != nil {
		return outcome{err: err, end: time.Now()}
	}
	defer resp.Body.Close()
	if _, err := io.ReadAll(resp.Body); err != nil {
		return outcome{code: resp.StatusCode, err: err, end: time.Now()}
	}
	return outcome{code: resp.StatusCode, end: time.Now()}
}

// startSlowRequests sends n /say requests at once and waits until the server reports them all in flight.
func (p *process) startSlowRequests(t *testing.T, n int) <-chan outcome {
	t.Helper()
	results := make(chan outcome, n)
	for range n {
		go func() { results <- p.get("/say?m=in-flight") }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p.metric(t, "cowweb_http_requests_in_flight") == fmt.Sprint(n) {
			return results
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("requests never all in flight")
	return nil
}

// metric returns the value of an unlabelled sample from /metrics.
func (p *process) metric(t *testing.T, name string) string {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if value, ok := strings.CutPrefix(line, name+" "); ok {
			return value
		}
	}
	return ""
}

func (p *process) terminate(t *testing.T) time.Time {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// waitRefused dials until the port refuses connections and returns when it first did.
func (p *process) waitRefused(t *testing.T, within time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", p.addr, time.Second)
		if err == nil {
			conn.Close()
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if isRefused(err) {
			return time.Now()
		}
		if errors.Is(err, syscall.ECONNRESET) {
			// The kernel completed this connection into the listener's backlog just as the listener closed: it is
			// reset, not accepted. The next one meets the closed port.
			continue
		}
		t.Fatalf("dial failed other than refused: %v", err)
	}
	t.Fatalf("connections still accepted %s after SIGTERM", within)
	return time.Time{}
}

// A request at --load 10000 takes about a second of CPU here: long enough to SIGTERM it mid-flight.
const slowArgs = "--slow --load 10000"

func TestGracefulShutdownFinishesInFlightAndRefusesNewConnections(t *testing.T) {
	p := startCowweb(t, append(strings.Fields(slowArgs), "--shutdown-gracefully=true")...)
	results := p.startSlowRequests(t, 2)
	p.terminate(t)
	refusedAt := p.waitRefused(t, 5*time.Second)
	for range 2 {
		r := <-results
		if r.err != nil || r.code != http.StatusOK {
			t.Fatalf("in-flight request: code %d, err %v; want 200", r.code, r.err)
		}
		if !r.end.After(refusedAt) {
			t.Errorf("in-flight request ended %v before the listener closed; the test did not exercise shutdown", refusedAt.Sub(r.end))
		}
	}
	state := p.waitExit(t)
	if state.ExitCode() != 0 {
		t.Errorf("exit code %d, want 0", state.ExitCode())
	}
	// Two requests in flight at SIGTERM, finished before the exit.
	want := []string{"listening", "sigterm", "sigterm.in_flight=2", "listener_closed", "exit", "exit.in_flight=0"}
	if got := p.loggedEvents(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("lifecycle log %v, want %v", got, want)
	}
}

func TestImmediateShutdownCutsInFlightRequests(t *testing.T) {
	p := startCowweb(t, append(strings.Fields(slowArgs), "--shutdown-gracefully=false")...)
	results := p.startSlowRequests(t, 2)
	p.terminate(t)
	for range 2 {
		if r := <-results; r.err == nil {
			t.Fatalf("in-flight request completed with %d; want it cut", r.code)
		}
	}
	state := p.waitExit(t)
	status := state.Sys().(syscall.WaitStatus)
	if !status.Signaled() || status.Signal() != syscall.SIGTERM {
		t.Errorf("exit status %v, want killed by SIGTERM like cowweb-go", state)
	}
	// Both in flight at SIGTERM are cut by the exit that follows at once.
	if got := strings.Join(p.loggedEvents(), ","); got != "listening,sigterm,sigterm.in_flight=2,exit,exit.in_flight=2" {
		t.Errorf("lifecycle log %v, want listening, sigterm and exit with 2 in flight", got)
	}
}

func TestDrainKeepsAcceptingForTheDelay(t *testing.T) {
	const delay = 1500 * time.Millisecond
	p := startCowweb(t, "--shutdown=drain", "--drain-delay", delay.String())
	sigterm := p.terminate(t)
	time.Sleep(100 * time.Millisecond)
	served := 0
	for time.Since(sigterm) < delay-300*time.Millisecond {
		r := p.get("/say?m=still-here")
		if r.err != nil || r.code != http.StatusOK {
			t.Fatalf("request %v after SIGTERM, within the drain delay: code %d, err %v", time.Since(sigterm), r.code, r.err)
		}
		served++
		time.Sleep(50 * time.Millisecond)
	}
	refusedAt := p.waitRefused(t, 5*time.Second)
	if refusedAt.Sub(sigterm) < delay {
		t.Errorf("refused %v after SIGTERM, before the drain delay %v", refusedAt.Sub(sigterm), delay)
	}
	if state := p.waitExit(t); state.ExitCode() != 0 {
		t.Errorf("exit code %d, want 0", state.ExitCode())
	}
	want := "listening,sigterm,sigterm.in_flight=0,drained,listener_closed,exit,exit.in_flight=0"
	if got := p.loggedEvents(); strings.Join(got, ",") != want {
		t.Errorf("lifecycle log %v, want %v", got, want)
	}
	t.Logf("%d new connections served during the drain delay", served)
}

func TestServeRejectsContradictoryFlags(t *testing.T) {
	out, err := exec.Command(cowwebBinary, "serve", "--shutdown=immediate", "--shutdown-gracefully=true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "contradicts") {
		t.Fatalf("want a contradiction error, got %v: %s", err, out)
	}
}

// The upstream flavour takes only cowweb-go v1.1.1's flags and, on SIGTERM, exits with status 0 whether it shut
// down gracefully (the request in flight completes) or not (it is cut).
func TestUpstreamFlavourBehavesAsV111(t *testing.T) {
	if out, err := exec.Command(upstreamBinary, "serve", "--shutdown=drain").CombinedOutput(); err == nil || !strings.Contains(string(out), "unknown flag: --shutdown") {
		t.Errorf("--shutdown accepted by the upstream flavour: %v %s", err, out)
	}
	for _, graceful := range []bool{true, false} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		cmd := exec.Command(upstreamBinary, "serve", "-p", fmt.Sprint(port), "-s", "-l", "6000", fmt.Sprintf("-g=%t", graceful))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if conn, err := net.Dial("tcp", addr); err == nil {
				conn.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the upstream flavour never listened")
			}
		}
		// A request of load 6000 (36 M calls) is still running when SIGTERM comes 100 ms later.
		result := make(chan error, 1)
		go func() {
			resp, err := http.Get("http://" + addr + "/say?m=moo")
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			result <- err
		}()
		time.Sleep(100 * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		waitErr := cmd.Wait()
		requestErr := <-result
		if waitErr != nil {
			t.Errorf("graceful %t: exit %v, want status 0 as v1.1.1", graceful, waitErr)
		}
		if graceful && requestErr != nil {
			t.Errorf("graceful: the request in flight failed: %v", requestErr)
		}
		if !graceful && requestErr == nil {
			t.Error("not graceful: the request in flight completed")
		}
	}
}
