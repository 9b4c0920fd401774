package experiment

import (
	"context"
	"errors"
	"time"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/report"
)

// AttackConfig is a bare attack: one case's load sent to URL, no app installed, no rollout.
type AttackConfig struct {
	Config
	Case plan.Case
	URL  string
	// Started, when set, is told the results directory once it exists.
	Started func(dir string)
	// Progress, when set, sees the load's progress.
	Progress func(load.Progress)
}

// AttackResult is what an attack did: its results directory, the attacker's own summary and, when the reports were
// written, the report.
type AttackResult struct {
	Dir      string
	Summary  load.Summary
	Report   report.Contents
	Reported bool
}

// Attack runs the load, then the final scrape and the reports — also after an interrupt (ctx done), so that what was
// gathered is kept; the results directory is then marked partial and the error says so.
func Attack(ctx context.Context, cfg AttackConfig) (AttackResult, error) {
	cfg.Kind = KindAttack
	session, err := Start(cfg.Config)
	if err != nil {
		return AttackResult{}, err
	}
	defer session.Close()
	result := AttackResult{Dir: session.Dir}
	if cfg.Started != nil {
		cfg.Started(session.Dir)
	}
	record, attackErr := session.Attack(ctx, cfg.Case, 1, cfg.URL, nil, cfg.Progress, nil)
	result.Summary = record.Summary
	interrupted := ctx.Err() != nil
	finishCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := session.FinalScrape(finishCtx, record.Summary.End); err != nil {
		return result, errors.Join(attackErr, err)
	}
	if result.Report, err = session.Finish(finishCtx, interrupted || attackErr != nil); err != nil {
		return result, errors.Join(attackErr, err)
	}
	if err := session.Close(); err != nil {
		return result, errors.Join(attackErr, err)
	}
	result.Reported = true
	if interrupted {
		return result, errors.Join(attackErr, errors.New("interrupted: the results directory is marked partial"))
	}
	return result, attackErr
}
