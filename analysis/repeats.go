package analysis

import (
	"math"

	"gonum.org/v1/gonum/stat"
	"gonum.org/v1/gonum/stat/distuv"
)

// Spread is a value across the runs of a case.
type Spread struct {
	Mean float64 `json:"mean"`
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
}

// CaseSummary is a case across its repeated runs.
type CaseSummary struct {
	Case      string `json:"case"`
	Runs      int    `json:"runs"`
	Errors    Spread `json:"errors"`
	ErrorRate Spread `json:"errorRate"`
	// ErrorRateCI95 is the 95 % confidence interval of the mean error rate (Student's t over the runs' rates,
	// clipped to [0, 1]); nil with one run.
	ErrorRateCI95 *[2]float64 `json:"errorRateCI95,omitempty"`
	MeanMs        Spread      `json:"meanMs"`
	P99Ms         Spread      `json:"p99Ms"`
}

// Summarize groups the finished runs by case, in the order the cases first appear; nil unless some case ran more than once.
func Summarize(runs []CaseRun) []CaseSummary {
	var order []string
	byCase := map[string][]CaseRun{}
	repeated := false
	for _, r := range runs {
		if r.Interrupted {
			continue
		}
		if _, ok := byCase[r.Case]; !ok {
			order = append(order, r.Case)
		}
		byCase[r.Case] = append(byCase[r.Case], r)
		repeated = repeated || len(byCase[r.Case]) > 1
	}
	if !repeated {
		return nil
	}
	out := make([]CaseSummary, 0, len(order))
	for _, name := range order {
		rs := byCase[name]
		values := func(f func(CaseRun) float64) []float64 {
			v := make([]float64, len(rs))
			for i, r := range rs {
				v[i] = f(r)
			}
			return v
		}
		rates := values(func(r CaseRun) float64 { return r.Whole.ErrorRate })
		s := CaseSummary{Case: name, Runs: len(rs),
			Errors:    spread(values(func(r CaseRun) float64 { return float64(r.Whole.Errors) })),
			ErrorRate: spread(rates),
			MeanMs:    spread(values(func(r CaseRun) float64 { return r.Whole.MeanMs })),
			P99Ms:     spread(values(func(r CaseRun) float64 { return r.Whole.P99Ms })),
		}
		if len(rs) > 1 {
			ci := confidenceInterval95(rates)
			s.ErrorRateCI95 = &ci
		}
		out = append(out, s)
	}
	return out
}

func spread(v []float64) Spread {
	s := Spread{Mean: stat.Mean(v, nil), Min: math.Inf(1), Max: math.Inf(-1)}
	for _, x := range v {
		s.Min, s.Max = math.Min(s.Min, x), math.Max(s.Max, x)
	}
	return s
}

// confidenceInterval95 is mean ± t(0.975, n−1)·s/√n: run-to-run variation, not only the binomial noise of one run.
func confidenceInterval95(v []float64) [2]float64 {
	mean, sd := stat.MeanStdDev(v, nil)
	t := distuv.StudentsT{Mu: 0, Sigma: 1, Nu: float64(len(v) - 1)}.Quantile(0.975)
	half := t * sd / math.Sqrt(float64(len(v)))
	return [2]float64{math.Max(0, mean-half), math.Min(1, mean+half)}
}
