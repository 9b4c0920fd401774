package analysis

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// Chart sizes: wide enough for a 3-minute run at one point per second.
const (
	chartWidth  = 24 * vg.Centimeter
	chartHeight = 10 * vg.Centimeter
)

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
func points(xs []float64, ys Points) plotter.XYs {
	var out plotter.XYs
	for i, y := range ys {
		if i < len(xs) && !math.IsNaN(y) && !math.IsInf(y, 0) {
			out = append(out, plotter.XY{X: xs[i], Y: y})
		}
	}
	return out
}

// shadeRollout greys the rollout window behind the lines.
func shadeRollout(p *plot.Plot, r CaseRun, top float64) error {
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

func maxOf(series ...Points) float64 {
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

// RequestsPlot plots requests per second by outcome over the run, the rollout window shaded.
func RequestsPlot(r CaseRun) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: requests/s by outcome", r.column())
	p.X.Label.Text = "seconds since load start"
	p.Y.Label.Text = "requests/s"
	var all []Points
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
	p.Legend.Top = true
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return p, nil
}

// LatencyPlot plots p50 and p99 latency over the run, the rollout window shaded.
func LatencyPlot(r CaseRun) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: latency", r.column())
	p.X.Label.Text = "seconds since load start"
	p.Y.Label.Text = "ms"
	top := maxOf(r.Series.P50Ms, r.Series.P99Ms) * 1.05
	if err := shadeRollout(p, r, max(top, 1)); err != nil {
		return nil, err
	}
	for _, q := range []struct {
		name   string
		values Points
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
	p.Legend.Top = true
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return p, nil
}

// WritePlot renders a plot in a format (png or svg).
func WritePlot(w io.Writer, p *plot.Plot, format string) error {
	wt, err := p.WriterTo(chartWidth, chartHeight, format)
	if err != nil {
		return err
	}
	_, err = wt.WriteTo(w)
	return err
}

// chartFileName makes a file name of a run's labels, which come from a results directory that may be anyone's:
// only letters, digits, '.', '_' and '-' stay, and it never starts with a dot, so it cannot leave the directory.
func chartFileName(r CaseRun, kind, format string) string {
	name := safeFileName(r.Case)
	if r.Run != "" && r.Run != "1" {
		name += "-run" + safeFileName(r.Run)
	}
	return fmt.Sprintf("%s-%s.%s", name, kind, format)
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

// WritePlots writes the requests and latency charts of every run into dir, in every format, and returns the files.
func WritePlots(dir string, rep Report) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	for _, r := range rep.Runs {
		for kind, build := range map[string]func(CaseRun) (*plot.Plot, error){"requests": RequestsPlot, "latency": LatencyPlot} {
			p, err := build(r)
			if err != nil {
				return files, fmt.Errorf("%s chart of %s: %w", kind, r.column(), err)
			}
			for _, format := range ChartFormats {
				path := filepath.Join(dir, chartFileName(r, kind, format))
				if err := rundir.WriteAtomic(path, 0o644, func(w io.Writer) error { return WritePlot(w, p, format) }); err != nil {
					return files, err
				}
				files = append(files, path)
			}
		}
	}
	return files, nil
}

// WriteAll writes report.md (article layout, the plan's language, then the long layout), the other language's
// tables, report.json, report.csv and charts/ into dir.
func WriteAll(dir string, rep Report, lang string) error {
	if _, err := labelsFor(lang); err != nil {
		return err
	}
	files := map[string]func(io.Writer) error{
		"report.json": func(w io.Writer) error { return WriteJSON(w, rep) },
		"report.csv":  func(w io.Writer) error { return WriteCSV(w, rep) },
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
			return WriteMarkdownLong(w, rep, l)
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
