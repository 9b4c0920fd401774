package check

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/load"
)

// Behaviours the check judges, in the order it reports them.
const (
	KeepsAccepting   = "keeps-accepting"
	FinishesInFlight = "finishes-in-flight"
	ClosesIdle       = "closes-idle"
	ExitsInTime      = "exits-in-time"
	PreStopNeeded    = "prestop-needed"
)

// Behaviours lists them.
var Behaviours = []string{KeepsAccepting, FinishesInFlight, ClosesIdle, ExitsInTime, PreStopNeeded}

// Expect says what counts as failing: at most MaxErrors failed requests in a behaviour's case, an exit within
// MaxExit of SIGTERM (0: the grace period) without SIGKILL; behaviours in Allow never fail the check; with
// Exercised, a behaviour the run did not put to the test fails (for CI, where a – must not pass unnoticed).
type Expect struct {
	MaxErrors uint64
	MaxExit   time.Duration
	Allow     []string
	Exercised bool
}

// ParseExpect reads --expect flags: max-errors=N, max-exit=DURATION, allow=BEHAVIOUR[,BEHAVIOUR], exercised.
func ParseExpect(flags []string) (Expect, map[string]string, error) {
	var e Expect
	stored := map[string]string{}
	for _, f := range flags {
		key, value, ok := strings.Cut(f, "=")
		if !ok && key == keyExercised {
			value, ok = "true", true
		}
		if !ok {
			return e, nil, fmt.Errorf("--expect %q: want KEY=VALUE (max-errors=N, max-exit=DURATION, allow=BEHAVIOUR) or exercised", f)
		}
		stored[key] = value
	}
	e, err := ExpectFrom(stored)
	return e, stored, err
}

const keyExercised = "exercised"

// ExpectFrom reads expectations as stored with a run (run.json's check).
func ExpectFrom(stored map[string]string) (Expect, error) {
	var e Expect
	for key, value := range stored {
		switch key {
		case "max-errors":
			n, err := strconv.ParseUint(value, 10, 64)
			if err != nil {
				return e, fmt.Errorf("--expect max-errors=%s: want a count", value)
			}
			e.MaxErrors = n
		case "max-exit":
			d, err := time.ParseDuration(value)
			if err != nil || d <= 0 {
				return e, fmt.Errorf("--expect max-exit=%s: want a duration such as 5s", value)
			}
			e.MaxExit = d
		case "allow":
			for _, b := range strings.Split(value, ",") {
				if !slices.Contains(Behaviours, b) {
					return e, fmt.Errorf("--expect allow=%s: %q is no behaviour (%s)", value, b, strings.Join(Behaviours, ", "))
				}
				e.Allow = append(e.Allow, b)
			}
		case keyExercised:
			b, err := strconv.ParseBool(value)
			if err != nil {
				return e, fmt.Errorf("--expect exercised=%s: want true or false", value)
			}
			e.Exercised = b
		default:
			return e, fmt.Errorf("--expect %s: unknown (max-errors, max-exit, allow, exercised)", key)
		}
	}
	return e, nil
}

// Failed says whether any verdict fails the check.
func Failed(verdicts []Verdict) bool {
	return slices.ContainsFunc(verdicts, func(v Verdict) bool { return v.Result == ResultFail })
}

// conclude sets a verdict's result from what was measured and what is expected: a behaviour not exercised is
// neither pass nor fail unless the expectations ask for every behaviour to be exercised; an allowed failure informs.
func conclude(v Verdict, e Expect) Verdict {
	switch {
	case v.NotExercised != "":
		v.OK = false
		v.Figure = strings.TrimPrefix(v.Figure+"; ", "; ") + "not exercised: " + v.NotExercised
		v.Result = ResultNotExercised
		if e.Exercised && !v.Advice {
			v.Result = ResultFail
			v.Figure += " (--expect exercised fails it)"
		}
	case v.Advice:
		v.Result = ResultAdvice
	case !v.OK && slices.Contains(e.Allow, v.Behaviour):
		v.Advice, v.Result = true, ResultAdvice
		v.Figure += " (allowed by --expect)"
	case v.OK:
		v.Result = ResultPass
	default:
		v.Result = ResultFail
	}
	return v
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + " s" }

// Verdicts judges each behaviour from a check's report (its runs with their timelines): each from its case's first
// finished run, exits-in-time from every run, prestop-needed from the sweep.
func Verdicts(rep analysis.Report, e Expect) []Verdict {
	runs := map[string]analysis.CaseRun{}
	for _, r := range rep.Runs {
		if _, seen := runs[r.Case]; !seen && !r.Interrupted {
			runs[r.Case] = r
		}
	}
	judge := func(v Verdict, caseName string, fill func(analysis.CaseRun, *Verdict)) Verdict {
		if r, ok := runs[caseName]; ok {
			fill(r, &v)
		} else {
			v.NotExercised = "its case (" + caseName + ") did not run"
		}
		return conclude(v, e)
	}
	return []Verdict{
		judge(Verdict{Behaviour: KeepsAccepting, Question: "On SIGTERM, does it keep accepting until it is out of the Service?"},
			CaseAccept, func(r analysis.CaseRun, v *Verdict) { keepsAccepting(r, e, v) }),
		judge(Verdict{Behaviour: FinishesInFlight, Question: "Does it finish what it started?"},
			CaseInFlight, func(r analysis.CaseRun, v *Verdict) { finishesInFlight(r, runs[CaseAccept], e, v) }),
		judge(Verdict{Behaviour: ClosesIdle, Question: "Does it close idle keep-alive connections cleanly?"},
			CaseIdle, func(r analysis.CaseRun, v *Verdict) { closesIdle(r, e, v) }),
		conclude(exitsInTime(rep, e), e),
		conclude(preStopNeeded(rep), e),
	}
}

func keepsAccepting(r analysis.CaseRun, e Expect, v *Verdict) {
	var closed, letGo []time.Duration
	terminations := r.Timeline.Terminations()
	for _, p := range terminations {
		end := p.ListenerClosed
		if end.IsZero() {
			end = p.Exited
		}
		if !end.IsZero() {
			closed = append(closed, end.Sub(p.SIGTERM))
		}
		if !p.LastServiceOut.IsZero() {
			letGo = append(letGo, p.LastServiceOut.Sub(p.SIGTERM))
		}
	}
	refused := r.Attribution[attribution.CauseBeforeServiceOut]
	v.OK = r.Whole.Errors <= e.MaxErrors
	v.Figure = fmt.Sprintf("%d new connection(s) failed after SIGTERM, before the proxies let go (%d errors in all); listener closed %s after SIGTERM (median), the last proxy let go %s after it",
		refused, r.Whole.Errors, secs(median(closed)), secs(median(letGo)))
	if len(terminations) == 0 {
		v.NotExercised = "no Pod got SIGTERM during the load"
	}
	if !v.OK {
		v.Fix = fmt.Sprintf("keep accepting for at least %s after SIGTERM: a preStop sleep (see %s) or a drain delay in the app before it closes its listener", secs(median(letGo)), PreStopNeeded)
	}
}

// finishesInFlight is exercised only when requests were in flight at a SIGTERM or at the exit (or the exit cut
// some): an app that exits at once would pass a run that had none to cut.
func finishesInFlight(r, accept analysis.CaseRun, e Expect, v *Verdict) {
	var atSIGTERM, atExit uint64
	for _, p := range r.InFlight {
		atSIGTERM += p.AtSIGTERM
		atExit += p.AtExit
	}
	cut := r.Attribution[attribution.CauseInFlightCut]
	completed := atSIGTERM - min(atExit, atSIGTERM)
	v.OK = cut <= e.MaxErrors
	v.Figure = fmt.Sprintf("%d request(s) in flight at %d SIGTERM(s): %d completed; %d still in flight at exit; %d request(s) cut by the exit (%d errors in all)",
		atSIGTERM, len(r.InFlight), completed, atExit, cut, r.Whole.Errors)
	if accept.Whole.P50Ms > 0 && r.Conditions.Replicas > 0 {
		// The load was chosen by Little's law from the accept case's latency (TuneInFlight); say what it implied.
		perPod := r.Conditions.MaxRPS * accept.Whole.P50Ms / 1000 / float64(r.Conditions.Replicas)
		v.Figure += fmt.Sprintf("; load %.1f/s × the app's median latency %.1f ms → %.1f in flight per Pod expected (Little's law)",
			r.Conditions.MaxRPS, accept.Whole.P50Ms, perPod)
	}
	if atSIGTERM == 0 && atExit == 0 && cut == 0 {
		v.NotExercised = "no request was in flight at any SIGTERM or exit — the app answers too fast for the load's rate; a slower --path (a request that does real work) exercises it"
	}
	if !v.OK {
		v.Fix = "on SIGTERM stop accepting and let the requests in flight finish (Go: http.Server.Shutdown), then exit; a grace period longer than the longest request"
	}
}

func closesIdle(r analysis.CaseRun, e Expect, v *Verdict) {
	v.OK = r.Whole.Errors <= e.MaxErrors
	v.Figure = fmt.Sprintf("%d error(s), %d of them 5xx (a balancer's 502 for a connection closed under a request)", r.Whole.Errors, r.Whole.ByClass[load.ClassHTTP5xx])
	if len(r.Timeline.Terminations()) == 0 {
		v.NotExercised = "no Pod got SIGTERM during the load"
	}
	if !v.OK {
		v.Fix = "on SIGTERM stop keep-alive (Go: SetKeepAlivesEnabled(false); else a Connection: close header) and keep serving until out of the Service, so each connection closes after a response, not under a request"
	}
}

// exitsInTime judges every run's terminations.
func exitsInTime(rep analysis.Report, e Expect) Verdict {
	v := Verdict{Behaviour: ExitsInTime, Question: "Does it exit in time?"}
	var exits []time.Duration
	codes := map[int]int{}
	killed, pods := 0, 0
	var grace time.Duration
	for _, r := range rep.Runs {
		grace = max(grace, r.Conditions.GracePeriod.D())
		for _, p := range r.Timeline.Terminations() {
			pods++
			if p.Killed {
				killed++
			}
			if !p.Exited.IsZero() {
				exits = append(exits, p.Exited.Sub(p.SIGTERM))
			}
			if p.ExitCode != nil {
				codes[*p.ExitCode]++
			}
		}
	}
	limit := e.MaxExit
	if limit == 0 {
		limit = grace
	}
	slowest := slices.Max(append(exits, 0))
	var codeList []string
	for _, c := range slices.Sorted(maps.Keys(codes)) {
		codeList = append(codeList, fmt.Sprintf("%d×%d", codes[c], c))
	}
	v.OK = killed == 0 && slowest <= limit
	v.Figure = fmt.Sprintf("%d Pod(s) terminated: exit codes %s; SIGTERM → exit median %s, slowest %s (limit %s); SIGKILL needed %d time(s)",
		pods, strings.Join(codeList, ", "), secs(median(exits)), secs(slowest), secs(limit), killed)
	if pods == 0 {
		v.NotExercised = "no Pod was terminated"
	}
	if !v.OK {
		v.Fix = "handle SIGTERM and exit when the work is done: shorten the work, or raise terminationGracePeriodSeconds above it"
	}
	return v
}

// preStopNeeded is advice from the accept case and its sweep.
func preStopNeeded(rep analysis.Report) Verdict {
	v := Verdict{Behaviour: PreStopNeeded, Question: "What preStop sleep does it need here?", Advice: true, OK: true}
	sweep := analysis.Report{ServiceOut: rep.ServiceOut}
	for _, r := range rep.Runs {
		if _, swept := sweepSleep(r.Case); r.Case == CaseAccept || swept {
			sweep.Runs = append(sweep.Runs, r)
		}
	}
	s := analysis.SweepOf(sweep)
	switch {
	case s == nil:
		v.NotExercised = "the accept case and its sweep did not run"
	case s.SmallestClean != nil:
		v.Figure = fmt.Sprintf("the smallest preStop sleep with no error here: %s", time.Duration(*s.SmallestClean))
	default:
		v.OK = false
		v.Figure = fmt.Sprintf("no preStop sleep up to %s was enough here", time.Duration(s.Points[len(s.Points)-1].Sleep))
		v.Fix = "the errors are not (only) new connections before service-out: see the other behaviours"
	}
	if s != nil && s.Recommended != nil {
		v.Figure += fmt.Sprintf("; the lab's measured service-out p99 %s → recommended %s. On a cluster the proxies' delay is the cluster's: measure it there (runner check --target kubernetes) and sleep longer than its p99",
			secs(time.Duration(*s.ServiceOutP99*float64(time.Second))), time.Duration(*s.Recommended))
	}
	return v
}
