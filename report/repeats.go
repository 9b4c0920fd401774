package report

import (
	"fmt"
	"math"
	"strings"

	"github.com/rollout-lab/rollout-lab/analysis"
)

// writeSummaryMarkdown writes the across-runs table: one column per case.
func writeSummaryMarkdown(b *strings.Builder, summaries []analysis.CaseSummary, l labels) {
	fmt.Fprintf(b, "\n### %s\n\n| %s", l.acrossRuns, l.condition)
	for _, s := range summaries {
		b.WriteString(" | " + escapeCell(s.Case))
	}
	b.WriteString(" |\n|---" + strings.Repeat("|--:", len(summaries)) + "|\n")
	rows := []struct {
		label string
		value func(analysis.CaseSummary) string
	}{
		{l.runs, func(s analysis.CaseSummary) string { return fmt.Sprint(s.Runs) }},
		{l.errorsMeanRange, func(s analysis.CaseSummary) string {
			return fmt.Sprintf("%s (%s–%s)", formatNumber(math.Round(s.Errors.Mean*10)/10), formatNumber(s.Errors.Min), formatNumber(s.Errors.Max))
		}},
		{l.errorRateMeanCI, func(s analysis.CaseSummary) string {
			if s.ErrorRateCI95 == nil {
				return formatRate(s.ErrorRate.Mean)
			}
			return fmt.Sprintf("%s [%s, %s]", formatRate(s.ErrorRate.Mean), formatRate(s.ErrorRateCI95[0]), formatRate(s.ErrorRateCI95[1]))
		}},
		{l.meanMsRange, func(s analysis.CaseSummary) string { return msRange(s.MeanMs) }},
		{l.p99MsRange, func(s analysis.CaseSummary) string { return msRange(s.P99Ms) }},
	}
	for _, row := range rows {
		b.WriteString("| " + row.label)
		for _, s := range summaries {
			b.WriteString(" | " + row.value(s))
		}
		b.WriteString(" |\n")
	}
}

func msRange(s analysis.Spread) string {
	return fmt.Sprintf("%s (%s–%s)", formatMs(s.Mean), formatMs(s.Min), formatMs(s.Max))
}
