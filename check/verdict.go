package check

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rollout-lab/rollout-lab/analysis"
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
// MaxExit of SIGTERM (0: the grace period) without SIGKILL; behaviours in Allow never fail the check.
type Expect struct {
	MaxErrors uint64
	MaxExit   time.Duration
	Allow     []string
}

// ParseExpect reads --expect KEY=VALUE flags: max-errors=N, max-exit=DURATION, allow=BEHAVIOUR[,BEHAVIOUR].
func ParseExpect(flags []string) (Expect, map[string]string, error) {
	var e Expect
	stored := map[string]string{}
	for _, f := range flags {
		key, value, ok := strings.Cut(f, "=")
		if !ok {
			return e, nil, fmt.Errorf("--expect %q: want KEY=VALUE (max-errors=N, max-exit=DURATION, allow=BEHAVIOUR)", f)
		}
		stored[key] = value
	}
	e, err := ExpectFrom(stored)
	return e, stored, err
}

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
		default:
			return e, fmt.Errorf("--expect %s: unknown (max-errors, max-exit, allow)", key)
		}
	}
	return e, nil
}

// Failed says whether any verdict fails the check.
func Failed(verdicts []analysis.Verdict) bool {
	return slices.ContainsFunc(verdicts, func(v analysis.Verdict) bool { return !v.OK && !v.Advice })
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

// Verdicts judges each behaviour from a check's report (its runs with their timelines).
func Verdicts(rep analysis.Report, e Expect) []analysis.Verdict {
	runs := map[string]analysis.CaseRun{}
	for _, r := range rep.Runs {
		if _, seen := runs[r.Case]; !seen && !r.Interrupted {
			runs[r.Case] = r
		}
	}
	var out []analysis.Verdict
	allowed := func(v analysis.Verdict) analysis.Verdict {
		if !v.OK && slices.Contains(e.Allow, v.Behaviour) {
			v.Advice = true
			v.Figure += " (allowed by --expect)"
		}
		return v
	}

	// judge fills a behaviour's verdict from its case's first finished run, or says the case did not run.
	judge := func(v analysis.Verdict, caseName string, fill func(r analysis.CaseRun, v *analysis.Verdict)) {
		if r, ok := runs[caseName]; ok {
			fill(r, &v)
		} else {
			v.Figure = "not run"
		}
		out = append(out, allowed(v))
	}

	// Keeps accepting until out of the Service.
	judge(analysis.Verdict{Behaviour: KeepsAccepting, Question: "On SIGTERM, does it keep accepting until it is out of the Service?"}, CaseAccept, func(r analysis.CaseRun, v *analysis.Verdict) {
		var closed, letGo []time.Duration
		for _, p := range r.Timeline.Terminations() {
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
		refused := r.Attribution[analysis.PhaseBeforeServiceOut]
		v.OK = r.Whole.Errors <= e.MaxErrors
		v.Figure = fmt.Sprintf("%d new connection(s) failed after SIGTERM, before the proxies let go (%d errors in all); listener closed %s after SIGTERM (median), the last proxy let go %s after it",
			refused, r.Whole.Errors, secs(median(closed)), secs(median(letGo)))
		if !v.OK {
			v.Fix = fmt.Sprintf("keep accepting for at least %s after SIGTERM: a preStop sleep (see %s) or a drain delay in the app before it closes its listener", secs(median(letGo)), PreStopNeeded)
		}
	})

	// Finishes what it started.
	judge(analysis.Verdict{Behaviour: FinishesInFlight, Question: "Does it finish what it started?"}, CaseInFlight, func(r analysis.CaseRun, v *analysis.Verdict) {
		var atSIGTERM, atExit uint64
		for _, p := range r.InFlight {
			atSIGTERM += p.AtSIGTERM
			atExit += p.AtExit
		}
		cut := r.Attribution[analysis.PhaseInFlightCut]
		completed := atSIGTERM - min(atExit, atSIGTERM)
		v.OK = cut <= e.MaxErrors
		v.Figure = fmt.Sprintf("%d request(s) in flight at SIGTERM: %d completed; %d still in flight at exit; %d request(s) cut by the exit (%d errors in all)",
			atSIGTERM, completed, atExit, cut, r.Whole.Errors)
		if atSIGTERM == 0 {
			v.Figure += " — nothing was in flight, so this was not exercised (a slower --path or longer requests would)"
		}
		if !v.OK {
			v.Fix = "on SIGTERM stop accepting and let the requests in flight finish (Go: http.Server.Shutdown), then exit; a grace period longer than the longest request"
		}
	})

	// Closes idle keep-alive connections cleanly.
	judge(analysis.Verdict{Behaviour: ClosesIdle, Question: "Does it close idle keep-alive connections cleanly?"}, CaseIdle, func(r analysis.CaseRun, v *analysis.Verdict) {
		v.OK = r.Whole.Errors <= e.MaxErrors
		v.Figure = fmt.Sprintf("%d error(s), %d of them 5xx (a balancer's 502 for a connection closed under a request)", r.Whole.Errors, r.Whole.ByClass[load.ClassHTTP5xx])
		if !v.OK {
			v.Fix = "on SIGTERM stop keep-alive (Go: SetKeepAlivesEnabled(false); else a Connection: close header) and keep serving until out of the Service, so each connection closes after a response, not under a request"
		}
	})

	// Exits in time.
	v := analysis.Verdict{Behaviour: ExitsInTime, Question: "Does it exit in time?"}
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
	slowest := time.Duration(0)
	for _, d := range exits {
		slowest = max(slowest, d)
	}
	var codeList []string
	for _, c := range slices.Sorted(maps.Keys(codes)) {
		codeList = append(codeList, fmt.Sprintf("%d×%d", codes[c], c))
	}
	v.OK = pods > 0 && killed == 0 && slowest <= limit
	v.Figure = fmt.Sprintf("%d Pod(s) terminated: exit codes %s; SIGTERM → exit median %s, slowest %s (limit %s); SIGKILL needed %d time(s)",
		pods, strings.Join(codeList, ", "), secs(median(exits)), secs(slowest), secs(limit), killed)
	if !v.OK {
		v.Fix = "handle SIGTERM and exit when the work is done: shorten the work, or raise terminationGracePeriodSeconds above it"
	}
	out = append(out, allowed(v))

	// What preStop sleep it needs here.
	v = analysis.Verdict{Behaviour: PreStopNeeded, Question: "What preStop sleep does it need here?", Advice: true, OK: true}
	sweep := analysis.Report{ServiceOut: rep.ServiceOut}
	for _, r := range rep.Runs {
		if _, swept := sweepSleep(r.Case); r.Case == CaseAccept || swept {
			sweep.Runs = append(sweep.Runs, r)
		}
	}
	s := analysis.SweepOf(sweep)
	switch {
	case s == nil:
		v.Figure = "not measured"
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
	out = append(out, v)
	return out
}
