package analysis

import (
	"fmt"
	"image/color"
	"maps"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/rollout-lab/rollout-lab/plan"
)

// Sweep answers a plan whose cases differ only in the preStop sleep: how the error rate falls with the sleep, the
// smallest sleep with no error in any run, and how that compares with the sleep the measured service-out
// recommends.
type Sweep struct {
	Points []SweepPoint `json:"points"`
	// SmallestClean is the smallest sleep whose every run had zero errors; nil when none had.
	SmallestClean *plan.Duration `json:"smallestCleanSleep,omitempty"`
	// LargestFailing is the largest sleep with an error in some run; nil when none had.
	LargestFailing *plan.Duration `json:"largestFailingSleep,omitempty"`
	// ServiceOutP99 and Recommended come from the measured service-out (nil when not measured).
	ServiceOutP99 *float64       `json:"serviceOutP99Seconds,omitempty"`
	Recommended   *plan.Duration `json:"recommendedPreStopSleep,omitempty"`
	// Agrees says whether the sweep bears the recommended sleep out: false when a sleep at least as long lost
	// requests, true when every swept sleep from the smallest clean one up was clean and the recommendation is at
	// least that long; nil when the sweep cannot tell (no measurement, or the recommendation falls between a failing
	// and a clean sleep, where the sweep tried nothing).
	Agrees *bool `json:"agrees,omitempty"`
}

// SweepPoint is one preStop sleep of a sweep, over its runs.
type SweepPoint struct {
	Sleep     plan.Duration `json:"sleep"`
	Cases     []string      `json:"cases"`
	Runs      int           `json:"runs"`
	Errors    uint64        `json:"errors"`
	ErrorRate Spread        `json:"errorRate"`
	// ErrorRateCI95 is the across-runs 95 % interval of the mean error rate (repeats > 1).
	ErrorRateCI95 *[2]float64 `json:"errorRateCI95,omitempty"`
	// Clean is true when every run at this sleep had zero errors.
	Clean bool `json:"clean"`
}

// SweepOf finds the sweep in a report: its finished runs at two or more preStop sleeps, all other conditions equal.
// nil when the report is no such sweep.
func SweepOf(rep Report) *Sweep {
	bySleep := map[plan.Duration][]CaseRun{}
	var first *Conditions
	for _, r := range rep.Runs {
		if r.Interrupted || !r.Conditions.AppKnown {
			continue
		}
		rest := r.Conditions
		rest.PreStopSleep, rest.PreStopAction = 0, ""
		if first == nil {
			first = &rest
		} else if rest != *first {
			return nil
		}
		bySleep[r.Conditions.PreStopSleep] = append(bySleep[r.Conditions.PreStopSleep], r)
	}
	if len(bySleep) < 2 {
		return nil
	}
	s := &Sweep{}
	for _, sleep := range slices.Sorted(maps.Keys(bySleep)) {
		runs := bySleep[sleep]
		p := SweepPoint{Sleep: sleep, Runs: len(runs), Clean: true}
		rates := make([]float64, len(runs))
		for i, r := range runs {
			if !slices.Contains(p.Cases, r.Case) {
				p.Cases = append(p.Cases, r.Case)
			}
			p.Errors += r.Whole.Errors
			p.Clean = p.Clean && r.Whole.Errors == 0
			rates[i] = r.Whole.ErrorRate
		}
		p.ErrorRate = spread(rates)
		if len(runs) > 1 {
			ci := confidenceInterval95(rates)
			p.ErrorRateCI95 = &ci
		}
		s.Points = append(s.Points, p)
		sleep := p.Sleep
		if p.Clean && s.SmallestClean == nil {
			s.SmallestClean = &sleep
		}
		if !p.Clean {
			s.LargestFailing = &sleep
		}
	}
	if rep.ServiceOut != nil {
		p99, rec := rep.ServiceOut.P99, rep.ServiceOut.RecommendedPreStop
		s.ServiceOutP99, s.Recommended = &p99, &rec
		var agrees bool
		switch {
		case s.LargestFailing != nil && rec <= *s.LargestFailing:
			agrees = false
		case s.SmallestClean != nil && rec >= *s.SmallestClean:
			agrees = true
		default:
			return s
		}
		s.Agrees = &agrees
	}
	return s
}

// untried says whether the recommendation falls where the sweep tried no sleep: above every failing one and below
// the smallest clean one (or above every swept sleep when none was clean).
func (s *Sweep) untried() bool {
	return s.Recommended != nil && s.Agrees == nil
}

func seconds(d plan.Duration) string { return formatSeconds(time.Duration(d).Seconds()) }

// sentence is the sweep's answer in one sentence.
func (s *Sweep) sentence(lang string) string {
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
			case s.untried() && s.SmallestClean == nil:
				b.WriteString(" で、この sweep では確かめられません (推奨は試したどの sleep よりも長い)。")
			case s.untried():
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
		case s.untried() && s.SmallestClean == nil:
			b.WriteString(": this sweep cannot tell (the recommendation is longer than every swept sleep).")
		case s.untried():
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
func writeSweepMarkdown(b *strings.Builder, s *Sweep, l labels, lang string) {
	fmt.Fprintf(b, "\n### %s\n\n%s\n\n| preStop sleep | %s | %s | %s |\n|--:|--:|--:|--:|\n", l.sweep, s.sentence(lang), l.runs, l.errors, l.errorRateMeanCI)
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
func SweepPlot(rep Report, s *Sweep) (*plot.Plot, error) {
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
	if slices.ContainsFunc(s.Points, func(pt SweepPoint) bool { return pt.ErrorRateCI95 != nil }) {
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
