package analysis

import (
	"maps"
	"slices"

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

// Untried says whether the recommendation falls where the sweep tried no sleep: above every failing one and below
// the smallest clean one (or above every swept sleep when none was clean).
func (s *Sweep) Untried() bool {
	return s.Recommended != nil && s.Agrees == nil
}
