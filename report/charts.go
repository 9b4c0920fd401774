package report

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/rundir"
	"github.com/rollout-lab/rollout-lab/timeline"
)

// Chart sizes: wide enough for a 3-minute run at one point per second.
const (
	chartWidth  = 24 * vg.Centimeter
	chartHeight = 10 * vg.Centimeter
)

// SweepChartName names the chart of errors against the preStop sleep (with the formats' extensions); no case
// run's chart has it, since those end in -requests, -latency or -timeline.
const SweepChartName = "sweep-prestop"

// ChartFormats are the image formats every chart is written in.
var ChartFormats = []string{"png", "svg"}

var classColors = map[string]color.RGBA{
	load.ClassNone:    {R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	load.ClassRefused: {R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	load.ClassReset:   {R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	load.ClassEOF:     {R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	load.ClassTimeout: {R: 0x8c, G: 0x56, B: 0x4b, A: 0xff},
	load.ClassHTTP4xx: {R: 0xe3, G: 0x77, B: 0xc2, A: 0xff},
	load.ClassHTTP5xx: {R: 0x7f, G: 0x7f, B: 0x7f, A: 0xff},
	load.ClassOther:   {R: 0x17, G: 0xbe, B: 0xcf, A: 0xff},
}

// points pairs x and y, leaving out steps without a value.
func points(xs []float64, ys analysis.Points) plotter.XYs {
	var out plotter.XYs
	for i, y := range ys {
		if i < len(xs) && !math.IsNaN(y) && !math.IsInf(y, 0) {
			out = append(out, plotter.XY{X: xs[i], Y: y})
		}
	}
	return out
}

// shadeRollout greys the rollout window behind the lines.
func shadeRollout(p *plot.Plot, r analysis.CaseRun, top float64) error {
	if r.Rollout == nil {
		return nil
	}
	start, ok := r.Phases[load.PhaseLoadStart]
	if !ok {
		return nil
	}
	x0, x1 := r.Rollout.Start.Sub(start).Seconds(), r.Rollout.End.Sub(start).Seconds()
	band, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: 0}, {X: x1, Y: 0}, {X: x1, Y: top}, {X: x0, Y: top}})
	if err != nil {
		return err
	}
	band.Color = color.RGBA{R: 0xe8, G: 0xe8, B: 0xf4, A: 0xff}
	band.LineStyle.Width = 0
	p.Add(band)
	p.Legend.Add("rollout", band)
	return nil
}

func maxOf(series ...analysis.Points) float64 {
	top := 0.0
	for _, s := range series {
		for _, v := range s {
			if !math.IsNaN(v) && !math.IsInf(v, 0) {
				top = max(top, v)
			}
		}
	}
	return top
}

// chartFont is the charts' typeface: a sans serif like the pages that show them (gonum's default is Liberation
// Serif). report.html carries its file, so a browser draws the SVG charts with the metrics they were laid out in.
var chartFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

// legendPadding separates a legend's entries, so that no entry's text runs into the next one's.
const legendPadding = 1.5 * vg.Millimeter

// newPlot is plot.New with the charts' typeface on every text and the legend entries spaced.
func newPlot() *plot.Plot {
	p := plot.New()
	for _, style := range []*text.Style{&p.Title.TextStyle, &p.X.Label.TextStyle, &p.Y.Label.TextStyle,
		&p.X.Tick.Label, &p.Y.Tick.Label, &p.Legend.TextStyle} {
		style.Font = font.From(chartFont, style.Font.Size)
	}
	p.Legend.Padding = legendPadding
	return p
}

// RequestsPlot plots requests per second by outcome over the run, the rollout window shaded.
func RequestsPlot(r analysis.CaseRun) (*plot.Plot, error) {
	p := newPlot()
	p.Title.Text = fmt.Sprintf("%s: requests/s by outcome", column(r))
	// A failure is counted when it ended: a connect that waited for a Pod already gone shows seconds after it was
	// sent, and after the SIGTERM marks it belongs to.
	p.X.Label.Text = "seconds since load start (requests counted when they ended)"
	p.Y.Label.Text = "requests/s"
	var all []analysis.Points
	for _, class := range load.Classes {
		all = append(all, r.Series.RateByClass[class])
	}
	top := maxOf(all...) * 1.05
	if err := shadeRollout(p, r, max(top, 1)); err != nil {
		return nil, err
	}
	for _, class := range load.Classes {
		ys, ok := r.Series.RateByClass[class]
		if !ok {
			continue
		}
		xy := points(r.Series.Seconds, ys)
		if len(xy) == 0 {
			continue
		}
		line, err := plotter.NewLine(xy)
		if err != nil {
			return nil, err
		}
		line.Color = classColors[class]
		line.Width = vg.Points(1.2)
		p.Add(line)
		name := class
		if class == load.ClassNone {
			name = "ok"
		}
		p.Legend.Add(name, line)
	}
	addLifecycleMarks(p, r)
	p.X.Tick.Marker = secondsTicker{}
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return p, nil
}

// LatencyPlot plots p50 and p99 latency over the run, the rollout window shaded.
func LatencyPlot(r analysis.CaseRun) (*plot.Plot, error) {
	p := newPlot()
	p.Title.Text = fmt.Sprintf("%s: latency", column(r))
	p.X.Label.Text = "seconds since load start"
	p.Y.Label.Text = "ms"
	top := maxOf(r.Series.P50Ms, r.Series.P99Ms) * 1.05
	if err := shadeRollout(p, r, max(top, 1)); err != nil {
		return nil, err
	}
	for _, q := range []struct {
		name   string
		values analysis.Points
		color  color.RGBA
		dashes []vg.Length
	}{{"p50", r.Series.P50Ms, color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, nil}, {"p99", r.Series.P99Ms, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}, []vg.Length{vg.Points(4), vg.Points(2)}}} {
		xy := points(r.Series.Seconds, q.values)
		if len(xy) == 0 {
			continue
		}
		line, err := plotter.NewLine(xy)
		if err != nil {
			return nil, err
		}
		line.LineStyle = draw.LineStyle{Color: q.color, Width: vg.Points(1.2), Dashes: q.dashes}
		p.Add(line)
		p.Legend.Add(q.name, line)
	}
	p.X.Tick.Marker = secondsTicker{}
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return p, nil
}

// WritePlot renders a plot in a format (png or svg) at the charts' size.
func WritePlot(w io.Writer, p *plot.Plot, format string) error {
	return writeFigure(w, p, chartWidth, chartHeight, format)
}

func writeFigure(w io.Writer, p *plot.Plot, width, height vg.Length, format string) error {
	c, err := draw.NewFormattedCanvas(width, height, format)
	if err != nil {
		return err
	}
	drawFigure(draw.New(c), p)
	_, err = c.WriteTo(w)
	return err
}

// chartMargin is the blank edge of every chart.
const chartMargin = 2 * vg.Millimeter

// legendGap separates the data from the legend on its right.
const legendGap = 6 * vg.Millimeter

// drawFigure draws p with its legend to the right of the data, never over it, and its title made small enough to
// fit; it returns the canvas the data was drawn in.
func drawFigure(c draw.Canvas, p *plot.Plot) draw.Canvas {
	if p.BackgroundColor != nil {
		c.SetColor(p.BackgroundColor)
		c.Fill(c.Rectangle.Path())
	}
	// A margin all round: rotated axis labels otherwise reach past the figure's edge.
	c = draw.Crop(c, chartMargin, -chartMargin, chartMargin, -chartMargin)
	legend := p.Legend
	p.Legend = plot.NewLegend()
	defer func() { p.Legend = legend }()
	legendWidth := vg.Length(0)
	if entries := legend.Rectangle(c).Size().X; entries > 0 {
		legendWidth = entries + legendGap
	}
	area := draw.Crop(c, 0, -legendWidth, 0, -vg.Points(4))
	for p.Title.TextStyle.Font.Size > vg.Points(7) && p.Title.TextStyle.Rectangle(p.Title.Text).Size().X > area.Size().X {
		p.Title.TextStyle.Font.Size -= vg.Points(0.5)
	}
	p.Draw(area)
	data := p.DataCanvas(area)
	if legendWidth > 0 {
		legend.Top, legend.Left = true, true
		legend.Draw(draw.Canvas{Canvas: c.Canvas, Rectangle: vg.Rectangle{
			Min: vg.Point{X: area.Max.X + legendGap, Y: data.Min.Y}, Max: vg.Point{X: c.Max.X, Y: data.Max.Y}}})
	}
	return data
}

// secondsTicker labels the time axis every few seconds (1, 2, 5, 10, 15, 30 or 60, whichever gives ten to twenty
// labels) with an unlabelled tick every second in between when the run is short enough to show them.
type secondsTicker struct{}

func (secondsTicker) Ticks(lo, hi float64) []plot.Tick {
	span := hi - lo
	step := 60.0
	for _, s := range []float64{1, 2, 5, 10, 15, 30, 60} {
		if span/s <= 20 {
			step = s
			break
		}
	}
	minor := 1.0
	if span > 300 {
		minor = step
	}
	var ticks []plot.Tick
	for t := math.Ceil(lo/minor) * minor; t <= hi+1e-9; t += minor {
		tick := plot.Tick{Value: t}
		if math.Abs(math.Remainder(t, step)) < 1e-9 {
			tick.Label = strconv.FormatFloat(t, 'f', -1, 64)
		}
		ticks = append(ticks, tick)
	}
	return ticks
}

// addVerticalLine marks a moment across the whole height of a plot.
func addVerticalLine(p *plot.Plot, x float64, name string) {
	line := &verticalLine{x: x, style: draw.LineStyle{Color: color.RGBA{R: 0x44, G: 0x44, B: 0x99, A: 0xff}, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(5), vg.Points(3)}}}
	p.Add(line)
	p.Legend.Add(name, line)
}

type verticalLine struct {
	x     float64
	style draw.LineStyle
}

func (l *verticalLine) Plot(c draw.Canvas, p *plot.Plot) {
	if l.x < p.X.Min || l.x > p.X.Max {
		return
	}
	xf, _ := p.Transforms(&c)
	c.StrokeLines(l.style, []vg.Point{{X: xf(l.x), Y: c.Min.Y}, {X: xf(l.x), Y: c.Max.Y}})
}

func (l *verticalLine) Thumbnail(c *draw.Canvas) {
	x := (c.Min.X + c.Max.X) / 2
	c.StrokeLines(l.style, []vg.Point{{X: x, Y: c.Min.Y}, {X: x, Y: c.Max.Y}})
}

// edgeMarks puts a glyph at the top or bottom edge of the data at each of its moments: lifecycle events over a
// chart of the load.
type edgeMarks struct {
	xs    []float64
	style draw.GlyphStyle
	top   bool
}

func (m edgeMarks) Plot(c draw.Canvas, p *plot.Plot) {
	xf, _ := p.Transforms(&c)
	y := c.Min.Y + m.style.Radius*1.6
	if m.top {
		y = c.Max.Y - m.style.Radius*1.6
	}
	for _, x := range m.xs {
		if x >= p.X.Min && x <= p.X.Max {
			c.DrawGlyph(m.style, vg.Point{X: xf(x), Y: y})
		}
	}
}

func (m edgeMarks) Thumbnail(c *draw.Canvas) { c.DrawGlyph(m.style, c.Center()) }

// addLifecycleMarks marks every SIGTERM (top edge) and every node's service-out (bottom edge) of a run's Pods on a
// chart of its load.
func addLifecycleMarks(p *plot.Plot, r analysis.CaseRun) {
	start, ok := r.Phases[load.PhaseLoadStart]
	if r.Timeline == nil || !ok {
		return
	}
	var sigterms, serviceOuts []float64
	for _, e := range r.Timeline.Events {
		switch e.Type {
		case timeline.EventSIGTERM:
			sigterms = append(sigterms, e.Time.Sub(start).Seconds())
		case timeline.EventServiceOut:
			serviceOuts = append(serviceOuts, e.Time.Sub(start).Seconds())
		}
	}
	for _, m := range []struct {
		name  string
		xs    []float64
		event string
		top   bool
	}{{"SIGTERM", sigterms, timeline.EventSIGTERM, true}, {"service-out (per node)", serviceOuts, timeline.EventServiceOut, false}} {
		if len(m.xs) == 0 {
			continue
		}
		style := markStyles[m.event]
		style.Radius = vg.Points(3)
		marks := edgeMarks{xs: m.xs, style: style, top: m.top}
		p.Add(marks)
		p.Legend.Add(m.name, marks)
	}
}

// chartFileName makes a file name of a run's labels, which come from a results directory that may be anyone's:
// only letters, digits, '.', '_' and '-' stay, and it never starts with a dot, so it cannot leave the directory.
func chartFileName(r analysis.CaseRun, kind, format string) string {
	return chartBaseName(r, kind) + "." + format
}

func chartBaseName(r analysis.CaseRun, kind string) string {
	name := safeFileName(r.Case)
	if r.Run != "" && r.Run != "1" {
		name += "-run" + safeFileName(r.Run)
	}
	return name + "-" + kind
}

func safeFileName(s string) string {
	safe := []rune(s)
	for i, r := range safe {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			safe[i] = '_'
		}
	}
	out := strings.TrimLeft(string(safe), ".")
	if out == "" {
		return "_"
	}
	return out
}

// reportChart is one chart of a report: the sweep's, or a case run's requests, latency or timeline.
type reportChart struct {
	kind     string // sweep, requests, latency or timeline
	run      int    // the case run's index in the report (-1: the sweep's)
	base     string // file name without the format's extension
	plot     *plot.Plot
	height   vg.Length
	timeline *timelinePlotter // the timeline's drawing, which collects its hotspots
}

// reportCharts builds every chart of a report, in the report's order: the sweep's answer when the report is a
// sweep, then per case run its requests and latency, and its timeline when it kept one. The chart files and
// report.html draw these same plots.
func reportCharts(rep Contents) ([]reportChart, error) {
	var charts []reportChart
	if sweep := rep.Sweep; sweep != nil {
		p, err := SweepPlot(rep, sweep)
		if err != nil {
			return nil, err
		}
		charts = append(charts, reportChart{kind: "sweep", run: -1, base: SweepChartName, plot: p, height: chartHeight})
	}
	for i, r := range rep.Runs {
		for _, c := range []struct {
			kind  string
			build func(analysis.CaseRun) (*plot.Plot, error)
		}{{"requests", RequestsPlot}, {"latency", LatencyPlot}} {
			p, err := c.build(r)
			if err != nil {
				return nil, fmt.Errorf("%s chart of %s: %w", c.kind, column(r), err)
			}
			charts = append(charts, reportChart{kind: c.kind, run: i, base: chartBaseName(r, c.kind), plot: p, height: chartHeight})
		}
		if r.Timeline != nil {
			t, err := TimelinePlot(r)
			if err != nil {
				return nil, err
			}
			charts = append(charts, reportChart{kind: "timeline", run: i, base: chartBaseName(r, "timeline"), plot: t.plot, height: t.height, timeline: t.plotter})
		}
	}
	return charts, nil
}

// WritePlots writes every chart of the report (reportCharts) into dir, in every format, and returns the files.
func WritePlots(dir string, rep Contents) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	charts, err := reportCharts(rep)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, c := range charts {
		for _, format := range ChartFormats {
			path := filepath.Join(dir, c.base+"."+format)
			if err := rundir.WriteAtomic(path, 0o644, func(w io.Writer) error { return writeFigure(w, c.plot, chartWidth, c.height, format) }); err != nil {
				return files, err
			}
			files = append(files, path)
		}
	}
	return files, nil
}

// writeChartLinks lists every run's charts (PNG) in report.md, the timeline first.
func writeChartLinks(w io.Writer, rep Contents) error {
	var b strings.Builder
	b.WriteString("\n## Charts\n")
	if rep.Sweep != nil {
		fmt.Fprintf(&b, "\n![errors against preStop sleep](charts/%s.png)\n", SweepChartName)
	}
	for _, r := range rep.Runs {
		fmt.Fprintf(&b, "\n### %s\n\n", column(r))
		kinds := []string{"requests", "latency"}
		if r.Timeline != nil {
			kinds = append([]string{"timeline"}, kinds...)
		}
		for _, kind := range kinds {
			fmt.Fprintf(&b, "![%s %s](charts/%s)\n", column(r), kind, chartFileName(r, kind, "png"))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteAll writes report.md (article layout, the plan's language, then the long layout and the charts), the other
// language's tables, report.json, report.csv, report.html and charts/ into dir.
func WriteAll(dir string, rep Contents, lang string, doc HTMLDocument) error {
	if _, err := labelsFor(lang); err != nil {
		return err
	}
	files := map[string]func(io.Writer) error{
		"report.json": func(w io.Writer) error { return WriteJSON(w, rep) },
		"report.csv":  func(w io.Writer) error { return WriteCSV(w, rep) },
		"report.html": func(w io.Writer) error { return WriteHTML(w, rep, lang, doc) },
	}
	for _, l := range Languages {
		name := "report." + l + ".md"
		if l == lang {
			name = "report.md"
		}
		files[name] = func(w io.Writer) error {
			if err := WriteMarkdown(w, rep, l); err != nil {
				return err
			}
			if _, err := io.WriteString(w, "\n"); err != nil {
				return err
			}
			if err := WriteMarkdownLong(w, rep, l); err != nil {
				return err
			}
			return writeChartLinks(w, rep)
		}
	}
	for name, write := range files {
		if err := rundir.WriteAtomic(filepath.Join(dir, name), 0o644, write); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	_, err := WritePlots(filepath.Join(dir, "charts"), rep)
	return err
}
