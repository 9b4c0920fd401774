// Package load drives open-model HTTP load with the vegeta library and exports every outcome as Prometheus metrics.
package load

import (
	"fmt"
	"math"
	"strings"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/rollout-lab/rollout-lab/plan"
)

// Segment is a linear piece of the arrival rate (the plan owns the arithmetic of arrivals).
type Segment = plan.Segment

// StagesPacer is a vegeta.Pacer for linear ramps and holds, as k6's ramping-arrival-rate: hit n is sent when the
// integral of the rate reaches n, and exactly Total hits are sent.
type StagesPacer struct {
	segments []Segment
	starts   []float64 // arrivals before each segment
	total    uint64
}

var _ vegeta.Pacer = (*StagesPacer)(nil)

// NewStagesPacer builds a pacer over segments; the total is the integral rounded down, as plan.Load.Requests counts.
func NewStagesPacer(segments []Segment) (*StagesPacer, error) {
	p := &StagesPacer{segments: segments}
	sum := 0.0
	for i, s := range segments {
		if s.Duration <= 0 || s.From < 0 || s.To < 0 || math.IsNaN(s.From) || math.IsNaN(s.To) {
			return nil, fmt.Errorf("segment %d: want a positive duration and non-negative rates, got %+v", i, s)
		}
		p.starts = append(p.starts, sum)
		sum += s.ArrivalsBy(s.Duration)
	}
	p.total = uint64(math.Floor(plan.Arrivals(segments)))
	return p, nil
}

// PacerFor is the pacer of a plan's load; it sends exactly l.Requests() hits.
func PacerFor(l plan.Load) (*StagesPacer, error) {
	return NewStagesPacer(l.Segments())
}

// Total is how many hits the pacer lets through.
func (p *StagesPacer) Total() uint64 { return p.total }

// Duration is the length of the schedule.
func (p *StagesPacer) Duration() time.Duration {
	var d time.Duration
	for _, s := range p.segments {
		d += s.Duration
	}
	return d
}

// Due is when hit n (counting from 0) is due, from the start.
func (p *StagesPacer) Due(n uint64) time.Duration {
	var offset time.Duration
	target := float64(n)
	for i, s := range p.segments {
		end := p.starts[i] + s.ArrivalsBy(s.Duration)
		if target > end && i < len(p.segments)-1 {
			offset += s.Duration
			continue
		}
		remaining := target - p.starts[i]
		if remaining <= 0 {
			return offset
		}
		// Solve From·t + a·t² = remaining for t, in the form that stays exact when a is 0 or negative.
		d := s.Duration.Seconds()
		a := (s.To - s.From) / (2 * d)
		disc := math.Max(s.From*s.From+4*a*remaining, 0)
		denominator := s.From + math.Sqrt(disc)
		if denominator <= 0 {
			return offset + s.Duration
		}
		t := 2 * remaining / denominator
		return offset + min(time.Duration(t*float64(time.Second)), s.Duration)
	}
	return offset
}

// Pace implements vegeta.Pacer.
func (p *StagesPacer) Pace(elapsed time.Duration, hits uint64) (time.Duration, bool) {
	if hits >= p.total {
		return 0, true
	}
	return p.Due(hits) - elapsed, false
}

// Rate implements vegeta.Pacer: the target arrival rate at elapsed.
func (p *StagesPacer) Rate(elapsed time.Duration) float64 {
	for _, s := range p.segments {
		if elapsed < s.Duration {
			return s.From + (s.To-s.From)*elapsed.Seconds()/s.Duration.Seconds()
		}
		elapsed -= s.Duration
	}
	return 0
}

func (p *StagesPacer) String() string {
	parts := make([]string, len(p.segments))
	for i, s := range p.segments {
		parts[i] = fmt.Sprintf("%g→%g/s over %s", s.From, s.To, s.Duration)
	}
	return fmt.Sprintf("Stages{%s; %d hits}", strings.Join(parts, ", "), p.total)
}
