package report

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/timeline"
	"gonum.org/v1/plot/vg"
)

// fixtureTimeline is a rollout of two Pods into two, as the lab records it: the old Pods' creation is before the
// run, the new ones start during it; three failed requests, one that reached no Pod.
func fixtureTimeline(start time.Time) *analysis.RunTimeline {
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	zero, killed := 0, 137
	ev := func(ms int, typ, pod, uid, node, ip string) timeline.Event {
		return timeline.Event{Time: at(ms), Type: typ, Namespace: "ns", Pod: pod, UID: uid, Node: node, PodIP: ip}
	}
	old1, old2, new1, new2 := "cowweb-6d4b-aaaaa", "cowweb-6d4b-bbbbb", "cowweb-7f9c-ccccc", "cowweb-7f9c-ddddd"
	events := []timeline.Event{
		ev(2000, timeline.EventPodCreated, new1, "n1", "lab-node-1", ""),
		ev(2020, timeline.EventContainerStart, new1, "n1", "lab-node-1", "198.18.0.4"),
		ev(2600, timeline.EventPodReady, new1, "n1", "lab-node-1", "198.18.0.4"),
		ev(2610, timeline.EventDeletionSeen, old1, "o1", "lab-node-2", "198.18.0.2"),
		ev(2615, timeline.EventEndpointNotReady, old1, "o1", "lab-node-2", "198.18.0.2"),
		ev(2620, timeline.EventSIGTERM, old1, "o1", "lab-node-2", "198.18.0.2"),
		ev(2625, timeline.EventListenerClosed, old1, "o1", "lab-node-2", "198.18.0.2"),
		ev(2900, timeline.EventServiceOut, old1, "o1", "lab-node-1", "198.18.0.2"),
		ev(3400, timeline.EventServiceOut, old1, "o1", "lab-node-2", "198.18.0.2"),
		{Time: at(3500), Type: timeline.EventContainerExited, Pod: old1, UID: "o1", Node: "lab-node-2", PodIP: "198.18.0.2", ExitCode: &zero},
		ev(2700, timeline.EventPodCreated, new2, "n2", "lab-node-2", ""),
		ev(3300, timeline.EventPodReady, new2, "n2", "lab-node-2", "198.18.0.5"),
		ev(3310, timeline.EventDeletionSeen, old2, "o2", "lab-node-1", "198.18.0.3"),
		ev(3311, timeline.EventPreStopStart, old2, "o2", "lab-node-1", "198.18.0.3"),
		ev(3320, timeline.EventEndpointNotReady, old2, "o2", "lab-node-1", "198.18.0.3"),
		ev(3700, timeline.EventServiceOut, old2, "o2", "lab-node-1", "198.18.0.3"),
		ev(3900, timeline.EventServiceOut, old2, "o2", "lab-node-2", "198.18.0.3"),
		ev(4311, timeline.EventSIGTERM, old2, "o2", "lab-node-1", "198.18.0.3"),
		ev(4700, timeline.EventSIGKILL, old2, "o2", "lab-node-1", "198.18.0.3"),
		{Time: at(4710), Type: timeline.EventContainerExited, Pod: old2, UID: "o2", Node: "lab-node-1", PodIP: "198.18.0.3", ExitCode: &killed},
	}
	return &analysis.RunTimeline{Events: events, Failures: attribution.Failures{Limit: attribution.FailureSampleLimit, Kept: []attribution.Failure{
		{Sent: at(2700), LatencyMs: 0.4, Class: load.ClassRefused, Cause: attribution.CauseBeforeServiceOut, Endpoint: "198.18.0.2:8080", Pod: "o1", Node: "lab-node-2"},
		{Sent: at(4500), LatencyMs: 210, Class: load.ClassReset, Cause: attribution.CauseInFlightCut, Endpoint: "198.18.0.3:8080", Node: "lab-node-1"},
		{Sent: at(3000), LatencyMs: 5000, Class: load.ClassTimeout, Cause: attribution.CauseOther},
	}}}
}

func TestTimelineChart(t *testing.T) {
	rep := fixtureReport()
	r := rep.Runs[0]
	r.Timeline = fixtureTimeline(r.Phases[load.PhaseLoadStart])
	chart, err := TimelinePlot(r)
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, row := range chart.plotter.rows {
		rows = append(rows, shortPodName(row.Name))
	}
	// Old Pods first, then the new ones, each in the order they appeared; the failure that reached no Pod has a row.
	if got := strings.Join(rows, ","); got != "6d4b-aaaaa,6d4b-bbbbb,7f9c-ccccc,7f9c-ddddd" || chart.plotter.noEndpoint != 4 {
		t.Errorf("rows %s, no-endpoint row %d", got, chart.plotter.noEndpoint)
	}
	var svg bytes.Buffer
	if err := writeFigure(&svg, chart.plot, chartWidth, chart.height, "svg"); err != nil {
		t.Fatal(err)
	}
	golden(t, "timeline.svg", svg.Bytes())
	// Every failure is a dot on its Pod's row (by UID, else by address), at the moment it failed; marks one per event.
	want := map[string]int{"failure": 3, "mark": 12}
	got := map[string]int{}
	for _, h := range chart.plotter.hotspots {
		got[h.Kind]++
		if h.Kind == "failure" && strings.Contains(h.Text, "reset") && (h.Y != chart.plotter.y(1) && (h.Y > -0.5 || h.Y < -1.5) || h.X < 4.7 || h.X > 4.72) {
			t.Errorf("the cut request is not on the killed Pod's row at its exit: %+v", h)
		}
		if h.Kind == "failure" && strings.Contains(h.Text, "timeout") && (h.Y > -3.5 || !strings.Contains(h.Text, noEndpointRow)) {
			t.Errorf("the request that reached no Pod is not on the no-endpoint row: %+v", h)
		}
	}
	if got["failure"] != want["failure"] || got["mark"] != want["mark"] {
		t.Errorf("hotspots %v, want %v", got, want)
	}
}

// report.html stands alone: no script, no file or address from elsewhere; its tables are the Markdown report's; each
// run with a timeline has one, with a hover title for every kept failure.
func TestHTMLReportIsSelfContained(t *testing.T) {
	rep := fixtureReport()
	rep.Runs[0].Timeline = fixtureTimeline(rep.Runs[0].Phases[load.PhaseLoadStart])
	var html bytes.Buffer
	if err := WriteHTML(&html, rep, "en", HTMLDocument{Provenance: [][2]string{{"target kind", "lab"}}, PlanYAML: "name: <x>\n"}); err != nil {
		t.Fatal(err)
	}
	page := html.String()
	for _, external := range []string{"<script", "<link", "<img", "src=", "url(", "@import", "http://", "https://"} {
		// The charts' font is the one url() allowed: the page's own data.
		if external == "url(" && strings.Count(page, external) == strings.Count(page, "url(data:font/ttf;base64,") {
			continue
		}
		if strings.Contains(page, external) && !(strings.HasPrefix(external, "http") && onlyNamespaces(page, external)) {
			t.Errorf("report.html refers outside itself: %q", external)
		}
	}
	if !strings.Contains(page, ">24060</td>") || !strings.Contains(page, ">39</td>") {
		t.Error("report.html lacks the article table's figures")
	}
	if n := strings.Count(page, `<figure class="timeline"`); n != 1 {
		t.Errorf("%d timelines, want 1 (one run kept one)", n)
	}
	if n := strings.Count(page, `<circle class="failure"`); n != 3 || !strings.Contains(page, `data-failures="3"`) {
		t.Errorf("%d failure dots, want 3", n)
	}
	if !strings.Contains(page, "name: &lt;x&gt;") {
		t.Error("the plan is not shown escaped")
	}
	dir := t.TempDir()
	if err := WriteAll(dir, rep, "en", HTMLDocument{}); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(md, []byte("![cowweb-ru-gs timeline](charts/cowweb-ru-gs-timeline.png)")) {
		t.Errorf("report.md does not show the timeline:\n%s", md)
	}
	for _, f := range []string{"cowweb-ru-gs-timeline.png", "cowweb-ru-gs-timeline.svg"} {
		if _, err := os.Stat(filepath.Join(dir, "charts", f)); err != nil {
			t.Error(err)
		}
	}
}

// onlyNamespaces says whether every occurrence of prefix in page is an XML namespace name, which is never fetched.
func onlyNamespaces(page, prefix string) bool {
	all := strings.Count(page, prefix)
	ns := len(regexp.MustCompile(`xmlns(:xlink)?="`+regexp.QuoteMeta(prefix)+`www\.w3\.org/[0-9]{4}/(svg|xlink)"`).FindAllString(page, -1))
	return all == ns
}

// Fifty replicas rolled over are a hundred rows: the chart turns to its overview, grows in height, and names only
// every few rows while drawing every Pod.
func TestTimelineOverviewForManyPods(t *testing.T) {
	rep := fixtureReport()
	r := rep.Runs[0]
	start := r.Phases[load.PhaseLoadStart]
	tl := &analysis.RunTimeline{}
	for i := range 100 {
		uid := fmt.Sprintf("pod-%03d", i)
		created := start.Add(time.Duration(i) * 30 * time.Millisecond)
		if i < 50 {
			tl.Events = append(tl.Events, timeline.Event{Time: start.Add(2*time.Second + time.Duration(i)*20*time.Millisecond), Type: timeline.EventSIGTERM, Pod: "cowweb-a-" + uid, UID: uid})
			continue
		}
		tl.Events = append(tl.Events, timeline.Event{Time: created.Add(2 * time.Second), Type: timeline.EventPodCreated, Pod: "cowweb-b-" + uid, UID: uid})
	}
	r.Timeline = tl
	chart, err := TimelinePlot(r)
	if err != nil {
		t.Fatal(err)
	}
	if !chart.plotter.overview || len(chart.plotter.rows) != 100 {
		t.Fatalf("overview %v with %d rows", chart.plotter.overview, len(chart.plotter.rows))
	}
	labelled := 0
	for _, tick := range chart.plot.Y.Tick.Marker.Ticks(chart.plot.Y.Min, chart.plot.Y.Max) {
		if tick.Label != "" {
			labelled++
		}
	}
	if labelled < 20 || labelled > TimelineOverviewRows {
		t.Errorf("%d of 100 rows named", labelled)
	}
	if chart.height < 20*vg.Centimeter {
		t.Errorf("height %v for 100 rows", chart.height)
	}
	var png bytes.Buffer
	if err := writeFigure(&png, chart.plot, chartWidth, chart.height, "png"); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("TIMELINE_PNG") != "" {
		_ = os.WriteFile(os.Getenv("TIMELINE_PNG"), png.Bytes(), 0o644)
	}
}
