package report

import (
	"fmt"
	"image/color"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// noEndpointRow is the row of failed requests that reached no Pod (refused by the balancer, a timeout before any
// connection).
const noEndpointRow = "no endpoint"

// shortPodName keeps what tells a Deployment's Pods apart: the ReplicaSet hash and the Pod's suffix.
func shortPodName(name string) string {
	parts := strings.Split(name, "-")
	if len(parts) >= 3 {
		return strings.Join(parts[len(parts)-2:], "-")
	}
	return name
}

// Timeline chart colours: phases as bars, lifecycle marks, failures by class (classColors).
var (
	phaseColors = map[string]color.RGBA{
		"starting":      {R: 0xc6, G: 0xdb, B: 0xef, A: 0xff},
		"serving":       {R: 0x9e, G: 0xd8, B: 0x9e, A: 0xff},
		"preStop":       {R: 0xfd, G: 0xd0, B: 0xa2, A: 0xff},
		"after SIGTERM": {R: 0xfc, G: 0x9a, B: 0x9a, A: 0xff},
	}
	phaseOrder = []string{"starting", "serving", "preStop", "after SIGTERM"}
	markStyles = map[string]draw.GlyphStyle{
		timeline.EventEndpointNotReady: {Shape: draw.RingGlyph{}, Color: color.RGBA{R: 0x31, G: 0x82, B: 0xbd, A: 0xff}},
		timeline.EventServiceOut:       {Shape: tickGlyph{}, Color: color.RGBA{R: 0x08, G: 0x30, B: 0x6b, A: 0xff}},
		timeline.EventSIGTERM:          {Shape: draw.TriangleGlyph{}, Color: color.RGBA{R: 0xa5, G: 0x0f, B: 0x15, A: 0xff}},
		timeline.EventListenerClosed:   {Shape: draw.CrossGlyph{}, Color: color.RGBA{R: 0x54, G: 0x27, B: 0x88, A: 0xff}},
		timeline.EventSIGKILL:          {Shape: draw.PyramidGlyph{}, Color: color.RGBA{A: 0xff}},
		timeline.EventContainerExited:  {Shape: draw.SquareGlyph{}, Color: color.RGBA{R: 0x25, G: 0x25, B: 0x25, A: 0xff}},
	}
)

// tickGlyph is a short vertical line: one node's proxy letting go of the Pod.
type tickGlyph struct{}

func (tickGlyph) DrawGlyph(c *draw.Canvas, sty draw.GlyphStyle, pt vg.Point) {
	c.StrokeLines(draw.LineStyle{Color: sty.Color, Width: vg.Points(1.2)},
		[]vg.Point{{X: pt.X, Y: pt.Y - sty.Radius*1.6}, {X: pt.X, Y: pt.Y + sty.Radius*1.6}})
}

// Hotspot is a point of a chart that says more on hover in report.html: a failed request or a lifecycle mark.
type Hotspot struct {
	X, Y   float64 // data coordinates
	Kind   string  // "failure" or "mark"
	Radius vg.Length
	Text   string
}

// timelinePlotter draws a run's rows (phase bars, marks, failure dots) and collects the hotspots it drew.
type timelinePlotter struct {
	rows     []*analysis.PodLifecycle
	failures []attribution.Failure
	start    time.Time // load start: x = 0
	end      float64   // the chart's right edge, in seconds
	overview bool
	hotspots []Hotspot
	// failureRow maps a failure to its row: the Pod it reached, by UID or address, else the no-endpoint row.
	failureRow func(attribution.Failure) int
	noEndpoint int // the no-endpoint row's index, or -1
}

func (tp *timelinePlotter) x(t time.Time) float64 { return t.Sub(tp.start).Seconds() }

// y is a row's centre: the first row on top.
func (tp *timelinePlotter) y(row int) float64 { return -float64(row) }

func (tp *timelinePlotter) Plot(c draw.Canvas, p *plot.Plot) {
	half := 0.32
	radius := vg.Points(3.5)
	if tp.overview {
		half, radius = 0.42, vg.Points(2.2)
	}
	tp.drawPhases(c, p, half)
	tp.drawMarks(c, p, radius)
	tp.drawFailures(c, p, half, radius*0.7)
}

// drawPhases draws each Pod's phases as bars: starting, serving, preStop, after SIGTERM until its exit.
func (tp *timelinePlotter) drawPhases(c draw.Canvas, p *plot.Plot, half float64) {
	xf, yf := p.Transforms(&c)
	bar := func(row int, from, to float64, phase string) {
		from, to = max(from, p.X.Min), min(to, p.X.Max)
		if to <= from {
			return
		}
		y := tp.y(row)
		rect := vg.Rectangle{Min: vg.Point{X: xf(from), Y: yf(y - half)}, Max: vg.Point{X: xf(to), Y: yf(y + half)}}
		c.SetColor(phaseColors[phase])
		c.Fill(rect.Path())
	}
	left := p.X.Min
	for i, r := range tp.rows {
		serveFrom, serveTo := left, tp.end
		if !r.Created.IsZero() {
			readyAt := tp.end
			if !r.Ready.IsZero() {
				readyAt = tp.x(r.Ready)
			}
			bar(i, tp.x(r.Created), readyAt, "starting")
			serveFrom = readyAt
		}
		for _, t := range []time.Time{r.Exited, r.SIGTERM, r.PreStop, r.Deletion} {
			if !t.IsZero() {
				serveTo = min(serveTo, tp.x(t))
			}
		}
		bar(i, serveFrom, serveTo, "serving")
		exit := tp.end
		if !r.Exited.IsZero() {
			exit = tp.x(r.Exited)
		}
		if !r.PreStop.IsZero() {
			to := exit
			if !r.SIGTERM.IsZero() {
				to = tp.x(r.SIGTERM)
			}
			bar(i, tp.x(r.PreStop), to, "preStop")
		}
		if !r.SIGTERM.IsZero() {
			bar(i, tp.x(r.SIGTERM), exit, "after SIGTERM")
		}
	}
}

// drawMarks draws each Pod's lifecycle marks (a non-zero exit code beside its exit) with a hotspot for each.
func (tp *timelinePlotter) drawMarks(c draw.Canvas, p *plot.Plot, radius vg.Length) {
	xf, yf := p.Transforms(&c)
	for i, r := range tp.rows {
		for _, m := range r.Marks {
			x := tp.x(m.At)
			if x < p.X.Min || x > p.X.Max {
				continue
			}
			sty := markStyles[m.Event]
			sty.Radius = radius
			at := vg.Point{X: xf(x), Y: yf(tp.y(i))}
			c.DrawGlyph(sty, at)
			if m.Event == timeline.EventContainerExited && r.ExitCode != nil && *r.ExitCode != 0 {
				label := p.Y.Tick.Label
				label.Font.Size = vg.Points(7)
				label.XAlign, label.YAlign = draw.XLeft, draw.YCenter
				c.FillText(label, vg.Point{X: at.X + radius*1.5, Y: at.Y}, strconv.Itoa(*r.ExitCode))
			}
			text := fmt.Sprintf("%s %s at %.3f s", shortPodName(r.Name), m.Event, x)
			if m.Detail != "" {
				text += " (" + m.Detail + ")"
			}
			tp.hotspots = append(tp.hotspots, Hotspot{X: x, Y: tp.y(i), Kind: "mark", Radius: radius, Text: text})
		}
	}
}

// drawFailures draws each kept failure as a dot on its Pod's row when it failed, with a hotspot for each.
func (tp *timelinePlotter) drawFailures(c draw.Canvas, p *plot.Plot, half float64, dot vg.Length) {
	xf, yf := p.Transforms(&c)
	for k, f := range tp.failures {
		row := tp.failureRow(f)
		failedAt := tp.x(f.Sent) + f.LatencyMs/1000
		if row < 0 || failedAt < p.X.Min || failedAt > p.X.Max {
			continue
		}
		// Spread a row's dots a little in height, always the same way, so that many at one moment show as many.
		y := tp.y(row) + (float64(k%7)-3)/7*half*0.8
		c.DrawGlyph(draw.GlyphStyle{Shape: draw.CircleGlyph{}, Radius: dot, Color: classColors[f.Class]}, vg.Point{X: xf(failedAt), Y: yf(y)})
		pod := noEndpointRow
		if row != tp.noEndpoint {
			pod = tp.rows[row].Name
		}
		text := fmt.Sprintf("failed at %.3f s (sent %.3f s, %.1f ms): %s, cause %s, Pod %s", failedAt, tp.x(f.Sent), f.LatencyMs, f.Class, f.Cause, pod)
		if f.Node != "" {
			text += ", via " + f.Node
		}
		tp.hotspots = append(tp.hotspots, Hotspot{X: failedAt, Y: y, Kind: "failure", Radius: dot, Text: text})
	}
}

// TimelineOverviewRows is the number of rows above which the timeline chart turns into its overview: thinner
// rows, every Pod still drawn, but only every few Pods named on the axis.
const TimelineOverviewRows = 40

// timelineChart is a run's timeline chart: the plot, its size and what it will have drawn.
type timelineChart struct {
	plot    *plot.Plot
	plotter *timelinePlotter
	height  vg.Length
}

// TimelinePlot draws one row per Pod of a run (phases as bars; endpoint removal, each node's service-out, SIGTERM,
// listener closed, SIGKILL and exit as marks) and every kept failed request as a dot on the row of the Pod it
// reached, coloured by class; time in seconds since the load started, the rollout start marked.
func TimelinePlot(r analysis.CaseRun) (*timelineChart, error) {
	tl := r.Timeline
	if tl == nil {
		return nil, fmt.Errorf("%s: no timeline kept", column(r))
	}
	start, ok := r.Phases[load.PhaseLoadStart]
	if !ok {
		return nil, fmt.Errorf("%s: no load start", column(r))
	}
	var rolloutStart time.Time
	if r.Rollout != nil {
		rolloutStart = r.Rollout.Start
	}
	tp := newTimelinePlotter(tl, start, rolloutStart)
	nRows := len(tp.rows)
	if tp.noEndpoint >= 0 {
		nRows++
	}
	tp.overview = nRows > TimelineOverviewRows
	end, ok := r.Phases[load.PhaseLoadEnd]
	if !ok {
		end = r.Load.End
	}
	minX, maxX := tp.xRange(tl, end, rolloutStart)

	p := newPlot()
	p.Title.Text = fmt.Sprintf("%s: Pods and failed requests", column(r))
	p.X.Label.Text = "seconds since load start"
	p.X.Min, p.X.Max = minX, maxX
	p.X.Tick.Marker = secondsTicker{}
	p.Y.Min, p.Y.Max = -float64(nRows)+0.5, 0.5
	p.Y.Tick.Marker = tp.rowTicks(nRows)
	if !rolloutStart.IsZero() {
		addVerticalLine(p, rolloutStart.Sub(start).Seconds(), "rollout start")
	}
	p.Add(tp)
	addTimelineLegend(p, tl.Failures.Kept)
	rowHeight := 0.55 * vg.Centimeter
	if tp.overview {
		rowHeight = 0.22 * vg.Centimeter
	}
	height := max(chartHeight, vg.Length(nRows)*rowHeight+4*vg.Centimeter)
	return &timelineChart{plot: p, plotter: tp, height: height}, nil
}

// newTimelinePlotter lays out the run's Pods as rows and finds each kept failure's row: the Pod it reached, by
// UID or else by address, or a last row for the failures that reached no Pod.
func newTimelinePlotter(tl *analysis.RunTimeline, start, rolloutStart time.Time) *timelinePlotter {
	rows := analysis.Lifecycles(tl.Events, rolloutStart)
	tp := &timelinePlotter{rows: rows, failures: tl.Failures.Kept, start: start, noEndpoint: -1}
	byUID, byIP := map[string]int{}, map[string]int{}
	for i, row := range rows {
		byUID[row.UID] = i
		if row.IP != "" {
			byIP[row.IP] = i
		}
	}
	tp.failureRow = func(f attribution.Failure) int {
		if i, ok := byUID[f.Pod]; ok && f.Pod != "" {
			return i
		}
		if host, _, found := strings.Cut(f.Endpoint, ":"); found {
			if i, ok := byIP[host]; ok {
				return i
			}
		}
		return tp.noEndpoint
	}
	for _, f := range tl.Failures.Kept {
		if tp.failureRow(f) < 0 {
			tp.noEndpoint = len(rows)
			break
		}
	}
	return tp
}

// xRange sets the chart's right edge (the load's end, or a later exit or failure) and returns the span shown: the
// story is the rollout, from a little before its first event to a little after its last event or failure, so that
// what happens within a second of a Pod's SIGTERM has room.
func (tp *timelinePlotter) xRange(tl *analysis.RunTimeline, end, rolloutStart time.Time) (minX, maxX float64) {
	tp.end = max(end.Sub(tp.start).Seconds(), 1)
	for _, row := range tp.rows {
		if !row.Exited.IsZero() {
			tp.end = max(tp.end, tp.x(row.Exited))
		}
	}
	from, to := math.Inf(1), math.Inf(-1)
	if !rolloutStart.IsZero() {
		from = tp.x(rolloutStart)
	}
	for _, e := range tl.Events {
		if e.UID != "" && e.Type != timeline.EventPodRemoved {
			from, to = min(from, tp.x(e.Time)), max(to, tp.x(e.Time))
		}
	}
	for _, f := range tl.Failures.Kept {
		failed := tp.x(f.Sent) + f.LatencyMs/1000
		tp.end = max(tp.end, failed)
		from, to = min(from, tp.x(f.Sent)), max(to, failed)
	}
	const margin = 2.0
	if math.IsInf(from, 0) || math.IsInf(to, 0) {
		return 0, tp.end
	}
	return max(0, from-margin), min(tp.end, to+margin)
}

// rowTicks names the rows (old and new Pods, the no-endpoint row); an overview names only every few.
func (tp *timelinePlotter) rowTicks(nRows int) plot.ConstantTicks {
	names := make([]string, 0, nRows)
	for _, row := range tp.rows {
		label := shortPodName(row.Name)
		if row.Old {
			label = "old " + label
		} else {
			label = "new " + label
		}
		names = append(names, label)
	}
	if tp.noEndpoint >= 0 {
		names = append(names, noEndpointRow)
	}
	every := 1
	if tp.overview {
		every = int(math.Ceil(float64(nRows) / TimelineOverviewRows * 2))
	}
	var ticks []plot.Tick
	for i, name := range names {
		tick := plot.Tick{Value: tp.y(i)}
		if i%every == 0 || i == tp.noEndpoint {
			tick.Label = name
		}
		ticks = append(ticks, tick)
	}
	return plot.ConstantTicks(ticks)
}

// addTimelineLegend names the phases, the marks and the failure classes the run kept.
func addTimelineLegend(p *plot.Plot, kept []attribution.Failure) {
	for _, phase := range phaseOrder {
		p.Legend.Add(phase, boxThumb{phaseColors[phase]})
	}
	for _, event := range analysis.MarkedEvents {
		p.Legend.Add(event, glyphThumb{markStyles[event]})
	}
	for _, class := range load.ErrorClasses {
		if slices.ContainsFunc(kept, func(f attribution.Failure) bool { return f.Class == class }) {
			p.Legend.Add("failed: "+class, glyphThumb{draw.GlyphStyle{Shape: draw.CircleGlyph{}, Color: classColors[class]}})
		}
	}
}

// boxThumb is a legend entry's filled box.
type boxThumb struct{ color color.Color }

func (b boxThumb) Thumbnail(c *draw.Canvas) {
	c.SetColor(b.color)
	c.Fill(c.Rectangle.Path())
}

// glyphThumb is a legend entry's glyph.
type glyphThumb struct{ style draw.GlyphStyle }

func (g glyphThumb) Thumbnail(c *draw.Canvas) {
	sty := g.style
	sty.Radius = vg.Points(3.5)
	c.DrawGlyph(sty, c.Center())
}
