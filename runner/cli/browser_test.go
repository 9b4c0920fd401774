package cli

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// reportRendersInABrowser opens a results directory's report.html in headless Chromium, as a reader would, and
// checks that it stands alone and says what report.json says: no console error, no request but the file itself,
// the article table's totals and errors equal to report.json's, one timeline per case run with as many failure
// dots as the run kept failures; a screenshot goes to the test's temporary directory.
func reportRendersInABrowser(t *testing.T, resultsDir string) {
	t.Helper()
	browser, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("ROLLOUT_LAB_REQUIRE_BROWSER") != "" {
			t.Fatalf("chromium (Debian package chromium) is needed to check report.html: %v", err)
		}
		t.Log("report.html not checked in a browser: no chromium on this machine (Debian package chromium)")
		return
	}
	page := filepath.Join(resultsDir, "report.html")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.WindowSize(1400, 1000))...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	// Subscribe before the page opens: the subscriptions queue what the page does from then on.
	watchCtx, stopWatching := context.WithCancel(ctx)
	var mu sync.Mutex
	var problems, requests []string
	var watchers sync.WaitGroup
	watchers.Add(2)
	console := chromedp.Console(watchCtx)
	sent := chromedp.Events(watchCtx, network.RequestWillBeSent)
	go func() {
		defer watchers.Done()
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException || m.Type == chromedp.ConsoleWarning {
				mu.Lock()
				problems = append(problems, string(m.Type)+": "+m.Text)
				mu.Unlock()
			}
		}
	}()
	go func() {
		defer watchers.Done()
		for ev, err := range sent {
			if err != nil {
				return
			}
			mu.Lock()
			requests = append(requests, ev.Request.URL)
			mu.Unlock()
		}
	}()
	if err := chromedp.Do(ctx, chromedp.Navigate("file://"+page), chromedp.WaitReady("body")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	tables, err := chromedp.Run(ctx, chromedp.Evaluate[[][][]string](`[...document.querySelectorAll("#report table")].map(t => [...t.rows].map(r => [...r.cells].map(c => c.textContent.trim())))`))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	type shownTimeline struct {
		Run      string `json:"run"`
		Failures string `json:"failures"`
		Dots     int    `json:"dots"`
	}
	timelines, err := chromedp.Run(ctx, chromedp.Evaluate[[]shownTimeline](`[...document.querySelectorAll("figure.timeline")].map(f => ({run: f.dataset.run, failures: f.dataset.failures, dots: f.querySelectorAll("circle.failure").length}))`))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	screenshot, err := chromedp.Run(ctx, chromedp.FullScreenshot(80))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	// Let late console messages arrive, then stop watching.
	time.Sleep(500 * time.Millisecond)
	stopWatching()
	watchers.Wait()
	shot := filepath.Join(t.TempDir(), "report.png")
	if err := os.WriteFile(shot, screenshot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("report.html in chromium: %d tables, %d timelines, screenshot %s (%d bytes)", len(tables), len(timelines), shot, len(screenshot))
	if len(problems) > 0 {
		t.Errorf("report.html in chromium: %v", problems)
	}
	for _, u := range requests {
		// The page's own data (the charts' font) is no request to anywhere.
		if u != "file://"+page && !strings.HasPrefix(u, "data:") {
			t.Errorf("report.html made a request: %s", u)
		}
	}

	var rep analysis.Report
	data, err := os.ReadFile(filepath.Join(resultsDir, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(tables) == 0 {
		t.Fatal("report.html shows no table")
	}
	rows := map[string][]string{}
	for _, row := range tables[0] {
		if len(row) > 0 {
			rows[row[0]] = row[1:]
		}
	}
	for labels, value := range map[[2]string]func(analysis.CaseRun) uint64{
		{"Total requests", "総リクエスト数"}: func(r analysis.CaseRun) uint64 { return r.Whole.Total },
		{"Errors", "エラー数"}:            func(r analysis.CaseRun) uint64 { return r.Whole.Errors },
	} {
		label := labels[0]
		cells, ok := rows[label]
		if !ok {
			label = labels[1]
			cells = rows[label]
		}
		if len(cells) != len(rep.Runs) {
			t.Errorf("article table row %q: %v, want %d runs", label, cells, len(rep.Runs))
			continue
		}
		for i, r := range rep.Runs {
			if cells[i] != strconv.FormatUint(value(r), 10) {
				t.Errorf("%s of %s: the page says %s, report.json %d", label, r.Case, cells[i], value(r))
			}
		}
	}
	if len(timelines) != len(rep.Runs) {
		t.Errorf("%d timelines for %d case runs", len(timelines), len(rep.Runs))
	}
	for i, tl := range timelines {
		if i >= len(rep.Runs) {
			break
		}
		r := rep.Runs[i]
		kept, err := analysis.LoadRunTimeline(rundir.RunDir(resultsDir, r.Case, r.Run))
		if err != nil || kept == nil {
			t.Fatalf("%s: %v", r.Case, err)
		}
		if tl.Dots != len(kept.Failures.Kept) || tl.Failures != strconv.Itoa(tl.Dots) || !strings.HasPrefix(tl.Run, r.Case) {
			t.Errorf("timeline %d (%s): %d dots (says %s), the run kept %d failures", i, tl.Run, tl.Dots, tl.Failures, len(kept.Failures.Kept))
		}
	}
}
