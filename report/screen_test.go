package report

import (
	"bytes"
	"context"
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/load"
)

// screenWidth is the window the reports are looked at in: a laptop's browser.
const screenWidth = 1400

// shownText is one text of a chart as the browser drew it.
type shownText struct {
	Figure string  `json:"figure"`
	Text   string  `json:"text"`
	Left   float64 `json:"left"`
	Top    float64 `json:"top"`
	Right  float64 `json:"right"`
	Bottom float64 `json:"bottom"`
	// Chart is the box of the chart (its svg) the text belongs to.
	ChartLeft, ChartTop, ChartRight, ChartBottom float64
}

// pageOnScreen is what a reader sees of report.html: how wide the page is, whether the charts' font came, and
// where every chart text landed.
type pageOnScreen struct {
	ScrollWidth float64     `json:"scrollWidth"`
	FontLoaded  bool        `json:"fontLoaded"`
	Texts       []shownText `json:"texts"`
}

// report.html at 1400 px in Chromium, as a reader sees it: the page is no wider than the window (a long table
// scrolls in its own box), the charts are drawn in the typeface they were laid out in, and no chart text leaves
// its chart or runs over another text. Screenshots go to the test's temporary directory.
func TestReportHTMLOnAScreen(t *testing.T) {
	browser := testenv.Chromium(t)
	article := fixtureReport()
	article.Runs[0].Timeline = fixtureTimeline(article.Runs[0].Phases[load.PhaseLoadStart])
	for name, rep := range map[string]Contents{"article": article, "sweep": sweepFixture()} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			page := filepath.Join(dir, "report.html")
			var html bytes.Buffer
			if err := WriteHTML(&html, rep, "en", HTMLDocument{}); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(page, html.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			shown, shot := lookAt(t, browser, page)
			if err := os.WriteFile(filepath.Join(dir, "screen.png"), shot, 0o644); err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(bytes.NewReader(shot))
			if err != nil {
				t.Fatal(err)
			}
			if w := img.Bounds().Dx(); w > screenWidth || shown.ScrollWidth > screenWidth {
				t.Errorf("the page is %d px wide (scroll width %.0f) in a %d px window", w, shown.ScrollWidth, screenWidth)
			}
			if !shown.FontLoaded {
				t.Error(`the charts' font "Liberation Sans" did not load: the browser drew the charts in another`)
			}
			if len(shown.Texts) == 0 {
				t.Fatal("no chart text on the page")
			}
			checkTextsInPlace(t, shown.Texts)
		})
	}
}

func lookAt(t *testing.T, browser, page string) (pageOnScreen, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.WindowSize(screenWidth, 1000))...)
	defer cancelAlloc()
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	if err := chromedp.Do(ctx, chromedp.Navigate("file://"+page), chromedp.WaitReady("body")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	shown, err := chromedp.Run(ctx, chromedp.Evaluate[pageOnScreen](`(async () => {
		await document.fonts.ready;
		const texts = [];
		for (const fig of document.querySelectorAll("figure")) {
			const svg = fig.querySelector("svg");
			if (!svg) continue;
			const c = svg.getBoundingClientRect();
			for (const el of svg.querySelectorAll("text")) {
				const r = el.getBoundingClientRect();
				if (!el.textContent.trim() || r.width === 0) continue;
				texts.push({figure: fig.id, text: el.textContent, left: r.left, top: r.top, right: r.right, bottom: r.bottom,
					ChartLeft: c.left, ChartTop: c.top, ChartRight: c.right, ChartBottom: c.bottom});
			}
		}
		return {scrollWidth: document.documentElement.scrollWidth, fontLoaded: document.fonts.check('12px "Liberation Sans"') &&
			[...document.fonts].some(f => f.family.replaceAll('"', '') === "Liberation Sans" && f.status === "loaded"), texts};
	})()`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	return shown, shot
}

// checkTextsInPlace fails for a chart text outside its chart's box or over another text of the same chart.
func checkTextsInPlace(t *testing.T, texts []shownText) {
	t.Helper()
	const slack = 0.5 // px: anti-aliasing rounds boxes out
	for i, a := range texts {
		if a.Left < a.ChartLeft-slack || a.Right > a.ChartRight+slack || a.Top < a.ChartTop-slack || a.Bottom > a.ChartBottom+slack {
			t.Errorf("%s: %q reaches outside its chart (text %.1f–%.1f × %.1f–%.1f, chart %.1f–%.1f × %.1f–%.1f)", a.Figure, a.Text,
				a.Left, a.Right, a.Top, a.Bottom, a.ChartLeft, a.ChartRight, a.ChartTop, a.ChartBottom)
		}
		for _, b := range texts[i+1:] {
			if a.Figure != b.Figure {
				continue
			}
			w := min(a.Right, b.Right) - max(a.Left, b.Left)
			h := min(a.Bottom, b.Bottom) - max(a.Top, b.Top)
			// Text boxes include the font's line gap: a sliver of overlap is spacing, a third of the smaller box is not.
			smaller := min((a.Right-a.Left)*(a.Bottom-a.Top), (b.Right-b.Left)*(b.Bottom-b.Top))
			if w > 0 && h > 0 && w*h > smaller/3 {
				t.Errorf("%s: %q and %q overlap (%.1f × %.1f px)", a.Figure, a.Text, b.Text, w, h)
			}
		}
	}
}
