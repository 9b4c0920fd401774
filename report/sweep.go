package report

import (
	"fmt"
	"image/color"
	"slices"
	"strings"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/plan"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

func seconds(d plan.Duration) string { return formatSeconds(time.Duration(d).Seconds()) }

// sentence is the sweep's answer in one sentence.
func sweepSentence(s *analysis.Sweep, lang string) string {
	runs := s.Points[0].Runs
	var b strings.Builder
	if lang == "ja" {
		if s.SmallestClean != nil {
			fmt.Fprintf(&b, "すべての実行でエラーが 0 だった最小の preStop sleep は %s (sleep ごとに %d 回)。", seconds(*s.SmallestClean), runs)
		} else {
			fmt.Fprintf(&b, "試した preStop sleep (最大 %s) のどれも、すべての実行でエラー 0 にはなりませんでした。", seconds(s.Points[len(s.Points)-1].Sleep))
		}
		if s.Recommended != nil {
			fmt.Fprintf(&b, "サービスアウトの実測 p99 は %s、推奨 sleep は %s", formatSeconds(*s.ServiceOutP99), seconds(*s.Recommended))
			switch {
			case s.Untried() && s.SmallestClean == nil:
				b.WriteString(" で、この sweep では確かめられません (推奨は試したどの sleep よりも長い)。")
			case s.Untried():
				b.WriteString(" で、この sweep では確かめられません (推奨はエラーが出た sleep より長く、エラー 0 の sleep より短い: その間は試していません)。")
			case *s.Agrees:
				b.WriteString(" で、この結果と一致します (推奨はエラー 0 の最小値以上で、それより長い sleep にエラーはありません)。")
			default:
				fmt.Fprintf(&b, " で、この結果と一致しません (%s の sleep でもエラーが出ています)。", seconds(*s.LargestFailing))
			}
		}
		return b.String()
	}
	if s.SmallestClean != nil {
		fmt.Fprintf(&b, "The smallest preStop sleep with zero errors in every run is %s (%d run(s) per sleep).", seconds(*s.SmallestClean), runs)
	} else {
		fmt.Fprintf(&b, "No swept preStop sleep (up to %s) had zero errors in every run.", seconds(s.Points[len(s.Points)-1].Sleep))
	}
	if s.Recommended != nil {
		fmt.Fprintf(&b, " The measured service-out p99 is %s and the recommended sleep %s", formatSeconds(*s.ServiceOutP99), seconds(*s.Recommended))
		switch {
		case s.Untried() && s.SmallestClean == nil:
			b.WriteString(": this sweep cannot tell (the recommendation is longer than every swept sleep).")
		case s.Untried():
			b.WriteString(": this sweep cannot tell (the recommendation is longer than every sleep with errors and shorter than the smallest clean one: nothing between was tried).")
		case *s.Agrees:
			b.WriteString(": they agree (the recommendation is at least the smallest clean sleep, and no longer sleep had errors).")
		default:
			fmt.Fprintf(&b, ": they disagree (a sleep of %s, at least the recommendation, still had errors).", seconds(*s.LargestFailing))
		}
	}
	return b.String()
}

// writeSweepMarkdown writes the sweep's section: the sentence and the error rate per sleep.
func writeSweepMarkdown(b *strings.Builder, s *analysis.Sweep, l labels, lang string) {
	fmt.Fprintf(b, "\n### %s\n\n%s\n\n| preStop sleep | %s | %s | %s |\n|--:|--:|--:|--:|\n", l.sweep, sweepSentence(s, lang), l.runs, l.errors, l.errorRateMeanCI)
	for _, p := range s.Points {
		rate := formatRate(p.ErrorRate.Mean)
		if p.ErrorRateCI95 != nil {
			rate = fmt.Sprintf("%s [%s, %s]", rate, formatRate(p.ErrorRateCI95[0]), formatRate(p.ErrorRateCI95[1]))
		}
		fmt.Fprintf(b, "| %s | %d | %d | %s |\n", seconds(p.Sleep), p.Runs, p.Errors, rate)
	}
}

// SweepPlot draws the error rate against the preStop sleep, with the across-runs interval when there are repeats,
// and the recommended sleep.
func SweepPlot(rep Contents, s *analysis.Sweep) (*plot.Plot, error) {
	p := newPlot()
	p.Title.Text = fmt.Sprintf("%s: errors against preStop sleep", rep.Plan)
	p.X.Label.Text = "preStop sleep (s)"
	p.Y.Label.Text = "error rate (%)"
	var xy plotter.XYs
	var bars plotter.YErrors
	top := 0.0
	for _, pt := range s.Points {
		y := pt.ErrorRate.Mean * 100
		xy = append(xy, plotter.XY{X: time.Duration(pt.Sleep).Seconds(), Y: y})
		low, high := y, y
		if pt.ErrorRateCI95 != nil {
			low, high = pt.ErrorRateCI95[0]*100, pt.ErrorRateCI95[1]*100
		}
		bars = append(bars, struct{ Low, High float64 }{y - low, high - y})
		top = max(top, high)
	}
	line, points, err := plotter.NewLinePoints(xy)
	if err != nil {
		return nil, err
	}
	line.Color = classColors["refused"]
	points.Shape, points.Color, points.Radius = draw.CircleGlyph{}, classColors["refused"], vg.Points(3)
	p.Add(line, points)
	p.Legend.Add("error rate (mean)", line, points)
	if slices.ContainsFunc(s.Points, func(pt analysis.SweepPoint) bool { return pt.ErrorRateCI95 != nil }) {
		errorBars, err := plotter.NewYErrorBars(struct {
			plotter.XYer
			plotter.YErrorer
		}{xy, bars})
		if err != nil {
			return nil, err
		}
		errorBars.Color = color.RGBA{R: 0x55, G: 0x55, B: 0x55, A: 0xff}
		p.Add(errorBars)
		p.Legend.Add("95 % interval across runs", verticalBarThumb{errorBars.LineStyle})
	}
	if s.Recommended != nil {
		addVerticalLine(p, time.Duration(*s.Recommended).Seconds(), "recommended sleep")
	}
	p.Y.Min, p.Y.Max = 0, max(top*1.1, 0.1)
	p.X.Min = 0
	p.Add(plotter.NewGrid())
	return p, nil
}

// verticalBarThumb is a legend entry's vertical bar: an interval.
type verticalBarThumb struct{ style draw.LineStyle }

func (v verticalBarThumb) Thumbnail(c *draw.Canvas) {
	x := (c.Min.X + c.Max.X) / 2
	c.StrokeLines(v.style, []vg.Point{{X: x, Y: c.Min.Y}, {X: x, Y: c.Max.Y}})
}
