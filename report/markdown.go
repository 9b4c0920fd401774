// Package report writes what the analysis of a plan's runs found: report.md in the article's layout (Japanese or
// English, one column per case), the long layout, report.json and report.csv, report.html with every chart inline,
// and the charts themselves (requests, latency, the Pods' timeline, the sweep) as PNG and SVG.
package report

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/rollout-lab/rollout-lab/analysis"
	"github.com/rollout-lab/rollout-lab/analysis/attribution"
	"github.com/rollout-lab/rollout-lab/check"
	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// Contents is what the reports say: the analysis of a plan's runs (completed: see analysis.Report.Complete) and
// runner check's verdicts when it was a check.
type Contents struct {
	analysis.Report
	// Verdicts are runner check's answers, one per behaviour (check runs only).
	Verdicts []check.Verdict `json:"verdicts,omitempty"`
}

// labels of the Markdown tables, by language.
type labels struct {
	condition, preStop, graceful, replicas, cpuLoad, maxRPS, connections        string
	perUser, pooled, loadPath, inFlightSIGTERM, inFlightExit, lateness          string
	saturated, cpu, cpuModel                                                    string
	total, ok, errors, errorClass, errorCause, errorRate, mean, p50, p90, p99   string
	rolloutSeconds, rolloutErrors, rolloutErrorRate, rolloutP99, caseHeader     string
	on, off, none, drain, partial, expectations                                 string
	acrossRuns, runs, errorsMeanRange, errorRateMeanCI, meanMsRange, p99MsRange string
	sweep                                                                       string
}

var labelsByLang = map[string]labels{
	"ja": {
		condition: "条件", preStop: "preStop sleep", graceful: "グレースフルシャットダウン", replicas: "レプリカ数",
		cpuLoad: "CPU 負荷 (load)", maxRPS: "最大 rps", connections: "接続", perUser: "ユーザーごと", pooled: "プール (keep-alive)",
		loadPath: "負荷の経路: %s。", lateness: "送信の遅れ p99 / 最大 (ms)",
		saturated: "⚠ 飽和: %s で %s。この数値は計画どおりの実験ではありません。", cpu: "CPU: マシン使用率 / ノード容量到達 / Pod 抑制 (CFS 周期の割合)", cpuModel: "ラボの CPU: %s。", inFlightSIGTERM: "SIGTERM 時の処理中リクエスト (合計 / Pod 最大)", inFlightExit: "終了時の処理中リクエスト (合計 / Pod 最大)",
		total: "総リクエスト数", ok: "2xx 系レスポンス", errors: "エラー数", errorClass: "エラー (%s)", errorCause: "エラー原因: %s", errorRate: "エラー率",
		mean: "平均レスポンス時間(ms)", p50: "p50 レスポンス時間(ms)", p90: "p90 レスポンス時間(ms)", p99: "p99 レスポンス時間(ms)",
		rolloutSeconds: "ロールアウト区間(s)", rolloutErrors: "ロールアウト中のエラー数", rolloutErrorRate: "ロールアウト中のエラー率",
		rolloutP99: "ロールアウト中の p99(ms)", caseHeader: "ケース", expectations: "期待値",
		on: "あり", off: "なし", none: "なし", drain: "drain %s", partial: "**途中で中断された実行です。終わったところまでの結果です。**",
		acrossRuns: "繰り返しの集計", runs: "実行回数", errorsMeanRange: "エラー数 平均 (最小–最大)",
		errorRateMeanCI: "エラー率 平均 [95% 信頼区間]", meanMsRange: "平均レスポンス時間(ms) 平均 (最小–最大)", p99MsRange: "p99(ms) 平均 (最小–最大)",
		sweep: "preStop sleep ごとのエラー",
	},
	"en": {
		condition: "Condition", preStop: "preStop sleep", graceful: "Graceful shutdown", replicas: "Replicas",
		cpuLoad: "CPU load (load)", maxRPS: "Max rps", connections: "Connections", perUser: "per user", pooled: "pooled (keep-alive)",
		loadPath: "Load path: %s.", lateness: "Send lateness p99 / max (ms)",
		saturated: "⚠ Saturated: in %s %s. These figures are not the planned experiment.", cpu: "CPU: machine busy / node at capacity / Pod throttled (share of CFS periods)", cpuModel: "Lab CPU: %s.", inFlightSIGTERM: "In flight at SIGTERM (sum / max per Pod)", inFlightExit: "In flight at exit (sum / max per Pod)",
		total: "Total requests", ok: "2xx responses", errors: "Errors", errorClass: "Errors (%s)", errorCause: "Errors by cause: %s", errorRate: "Error rate",
		mean: "Mean latency (ms)", p50: "p50 latency (ms)", p90: "p90 latency (ms)", p99: "p99 latency (ms)",
		rolloutSeconds: "Rollout window (s)", rolloutErrors: "Errors during the rollout", rolloutErrorRate: "Error rate during the rollout",
		rolloutP99: "p99 during the rollout (ms)", caseHeader: "Case", expectations: "Expectations",
		on: "on", off: "off", none: "none", drain: "drain %s", partial: "**This run was interrupted: results cover what finished.**",
		acrossRuns: "Across runs", runs: "Runs", errorsMeanRange: "Errors mean (min–max)",
		errorRateMeanCI: "Error rate mean [95% CI]", meanMsRange: "Mean latency (ms) mean (min–max)", p99MsRange: "p99 (ms) mean (min–max)",
		sweep: "Errors against preStop sleep",
	},
}

// Languages are the report languages.
var Languages = []string{"ja", "en"}

func labelsFor(lang string) (labels, error) {
	l, ok := labelsByLang[lang]
	if !ok {
		return labels{}, fmt.Errorf("report language %q: want one of %s", lang, strings.Join(Languages, ", "))
	}
	return l, nil
}

// column is one run as the tables show it.
func column(r analysis.CaseRun) string {
	name := r.Case
	if r.Run != "" && r.Run != "1" {
		name += " #" + r.Run
	}
	if r.Interrupted {
		name += " (interrupted)"
	}
	return name
}

func (l labels) connection(c analysis.Conditions) string {
	switch c.Connection {
	case plan.ConnectionPerUser:
		if c.ThinkTime > 0 {
			return fmt.Sprintf("%s (think %s)", l.perUser, c.ThinkTime)
		}
		return l.perUser
	case plan.ConnectionPooled:
		return l.pooled
	}
	return "-"
}

func (l labels) shutdown(c analysis.Conditions) string {
	switch c.Shutdown {
	case plan.ShutdownGraceful:
		return l.on
	case plan.ShutdownImmediate:
		return l.off
	case plan.ShutdownDrain:
		return fmt.Sprintf(l.drain, c.DrainDelay)
	case "":
		return "-" // not cowweb: the app's own
	}
	return c.Shutdown
}

func (l labels) preStopSleep(c analysis.Conditions) string {
	switch {
	case c.PreStopAction == plan.PreStopHTTPGet:
		return plan.PreStopHTTPGet
	case c.PreStopAction == plan.PreStopNone, c.PreStopSleep == 0:
		return l.none
	}
	return fmt.Sprintf("%gs", c.PreStopSleep.Seconds())
}

func formatCount(n uint64) string { return strconv.FormatUint(n, 10) }

func formatRate(r float64) string { return strconv.FormatFloat(r*100, 'f', 2, 64) + "%" }

// inLanguage is the Japanese text for a Japanese report when there is one, else the English.
func inLanguage(lang, en, ja string) string {
	if lang == "ja" && ja != "" {
		return ja
	}
	return en
}

func formatMs(ms float64) string { return strconv.FormatFloat(ms, 'f', 1, 64) }

func formatNumber(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// errorClassesSeen are the error classes with a count in any run, in the fixed report order.
func errorClassesSeen(runs []analysis.CaseRun) []string {
	var seen []string
	for _, class := range load.ErrorClasses {
		for _, r := range runs {
			if r.Whole.ByClass[class] > 0 {
				seen = append(seen, class)
				break
			}
		}
	}
	return seen
}

type row struct {
	label  string
	values func(analysis.CaseRun) string
}

// rows is the article table's row list, in the article's order: long because it is a table, each entry a label
// and how a run fills it; a row appears only when some run has its data.
func (l labels) rows(runs []analysis.CaseRun) []row {
	app := func(f func(analysis.CaseRun) string) func(analysis.CaseRun) string {
		return func(r analysis.CaseRun) string {
			if !r.Conditions.AppKnown {
				return "-"
			}
			return f(r)
		}
	}
	rows := []row{
		{l.preStop, app(func(r analysis.CaseRun) string { return l.preStopSleep(r.Conditions) })},
		{l.graceful, app(func(r analysis.CaseRun) string { return l.shutdown(r.Conditions) })},
		{l.replicas, app(func(r analysis.CaseRun) string { return strconv.Itoa(r.Conditions.Replicas) })},
		{l.cpuLoad, app(func(r analysis.CaseRun) string { return strconv.Itoa(r.Conditions.CPULoad) })},
		{l.maxRPS, func(r analysis.CaseRun) string { return formatNumber(r.Conditions.MaxRPS) }},
	}
	if slices.ContainsFunc(runs, func(r analysis.CaseRun) bool { return r.Conditions.Connection != "" }) {
		rows = append(rows, row{l.connections, func(r analysis.CaseRun) string { return l.connection(r.Conditions) }})
	}
	rows = append(rows, []row{
		{l.total, func(r analysis.CaseRun) string { return formatCount(r.Whole.Total) }},
		{l.ok, func(r analysis.CaseRun) string { return formatCount(r.Whole.OK) }},
		{l.errors, func(r analysis.CaseRun) string { return formatCount(r.Whole.Errors) }},
	}...)
	for _, class := range errorClassesSeen(runs) {
		rows = append(rows, row{fmt.Sprintf(l.errorClass, class), func(r analysis.CaseRun) string { return formatCount(r.Whole.ByClass[class]) }})
	}
	if slices.ContainsFunc(runs, func(r analysis.CaseRun) bool { return r.Attribution != nil }) {
		for _, cause := range attribution.Causes {
			rows = append(rows, row{fmt.Sprintf(l.errorCause, cause), func(r analysis.CaseRun) string {
				if r.Attribution == nil {
					return "-"
				}
				return formatCount(r.Attribution[cause])
			}})
		}
	}
	if slices.ContainsFunc(runs, func(r analysis.CaseRun) bool { return r.Lateness != nil }) {
		rows = append(rows, row{l.lateness, func(r analysis.CaseRun) string {
			if r.Lateness == nil {
				return "-"
			}
			mark := ""
			if r.Lateness.P99Ms > analysis.SaturatedLateness {
				mark = " ⚠"
			}
			return formatMs(r.Lateness.P99Ms) + " / " + formatMs(r.Lateness.MaxMs) + mark
		}})
	}
	if slices.ContainsFunc(runs, func(r analysis.CaseRun) bool { return r.CPU != nil }) {
		rows = append(rows, row{l.cpu, func(r analysis.CaseRun) string {
			mark := ""
			if machineSaturated(r) {
				mark = " ⚠"
			}
			return cpuCell(r.CPU) + mark
		}})
	}
	if slices.ContainsFunc(runs, func(r analysis.CaseRun) bool { return r.InFlight != nil }) {
		inFlight := func(at func(rundir.PodInFlight) uint64) func(analysis.CaseRun) string {
			return func(r analysis.CaseRun) string {
				if r.InFlight == nil {
					return "-"
				}
				var sum, most uint64
				for _, p := range r.InFlight {
					sum += at(p)
					most = max(most, at(p))
				}
				return formatCount(sum) + " / " + formatCount(most)
			}
		}
		rows = append(rows,
			row{l.inFlightSIGTERM, inFlight(func(p rundir.PodInFlight) uint64 { return p.AtSIGTERM })},
			row{l.inFlightExit, inFlight(func(p rundir.PodInFlight) uint64 { return p.AtExit })})
	}
	rows = append(rows,
		row{l.errorRate, func(r analysis.CaseRun) string { return formatRate(r.Whole.ErrorRate) }},
		row{l.mean, func(r analysis.CaseRun) string { return formatMs(r.Whole.MeanMs) }},
		row{l.p50, func(r analysis.CaseRun) string {
			if r.Overloaded() {
				return formatMs(r.Whole.P50Ms) + " ⚠"
			}
			return formatMs(r.Whole.P50Ms)
		}},
		row{l.p90, func(r analysis.CaseRun) string { return formatMs(r.Whole.P90Ms) }},
		row{l.p99, func(r analysis.CaseRun) string { return formatMs(r.Whole.P99Ms) }},
	)
	if slices.ContainsFunc(runs, func(r analysis.CaseRun) bool { return r.During != nil }) {
		during := func(f func(analysis.CaseRun) string) func(analysis.CaseRun) string {
			return func(r analysis.CaseRun) string {
				if r.During == nil {
					return "-"
				}
				return f(r)
			}
		}
		rows = append(rows,
			row{l.rolloutSeconds, during(func(r analysis.CaseRun) string {
				return strconv.FormatFloat(r.Rollout.End.Sub(r.Rollout.Start).Seconds(), 'f', 1, 64)
			})},
			row{l.rolloutErrors, during(func(r analysis.CaseRun) string { return formatCount(r.During.Errors) })},
			row{l.rolloutErrorRate, during(func(r analysis.CaseRun) string { return formatRate(r.During.ErrorRate) })},
			row{l.rolloutP99, during(func(r analysis.CaseRun) string { return formatMs(r.During.P99Ms) })},
		)
	}
	if slices.ContainsFunc(runs, func(r analysis.CaseRun) bool { return len(r.Expectations) > 0 }) {
		rows = append(rows, row{l.expectations, func(r analysis.CaseRun) string {
			if len(r.Expectations) == 0 {
				return "-"
			}
			parts := make([]string, len(r.Expectations))
			for i, e := range r.Expectations {
				mark := "✓"
				if !e.OK {
					mark = "✗"
				}
				parts[i] = fmt.Sprintf("%s %s (%s)", mark, e.Condition, e.Actual)
			}
			return strings.Join(parts, ", ")
		}})
	}
	return rows
}

func escapeCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// WriteMarkdown writes the article layout: one column per case run, conditions then outcomes.
func WriteMarkdown(w io.Writer, rep Contents, lang string) error {
	l, err := labelsFor(lang)
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## %s\n\n", rep.Plan)
	if rep.Description != "" {
		fmt.Fprintf(&b, "%s\n\n", rep.Description)
	}
	if rep.Partial {
		fmt.Fprintf(&b, "%s\n\n", l.partial)
	}
	if len(rep.Verdicts) > 0 {
		b.WriteString("### Verdicts\n\n")
		if err := check.WriteVerdicts(&b, rep.Verdicts); err != nil {
			return err
		}
		b.WriteString("\n")
	}
	b.WriteString("| " + l.condition)
	for _, r := range rep.Runs {
		b.WriteString(" | " + escapeCell(column(r)))
	}
	b.WriteString(" |\n|---" + strings.Repeat("|--:", len(rep.Runs)) + "|\n")
	for _, row := range l.rows(rep.Runs) {
		b.WriteString("| " + row.label)
		for _, r := range rep.Runs {
			b.WriteString(" | " + row.values(r))
		}
		b.WriteString(" |\n")
	}
	if path := inLanguage(lang, rep.LoadPath, rep.LoadPathJa); path != "" {
		fmt.Fprintf(&b, "\n"+l.loadPath+"\n", path)
	}
	if model := inLanguage(lang, rep.CPUModel, rep.CPUModelJa); model != "" {
		fmt.Fprintf(&b, "\n"+l.cpuModel+"\n", model)
	}
	if rep.Cluster != nil {
		fmt.Fprintf(&b, "\n%s\n", clusterSentence(rep.Cluster, lang))
	}
	for _, r := range rep.Runs {
		if reasons := saturationReasons(r, lang); len(reasons) > 0 {
			sep := "; "
			if lang == "ja" {
				sep = "、"
			}
			fmt.Fprintf(&b, "\n"+l.saturated+"\n", column(r), strings.Join(reasons, sep))
		}
	}
	if rep.ServiceOut != nil {
		fmt.Fprintf(&b, "\n%s\n", serviceOutSentence(rep.ServiceOut, lang))
	}
	if summaries := rep.AcrossRuns; summaries != nil {
		writeSummaryMarkdown(&b, summaries, l)
	}
	if sweep := rep.Sweep; sweep != nil {
		writeSweepMarkdown(&b, sweep, l, lang)
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// WriteMarkdownLong writes one row per case run, for plans with many cases.
func WriteMarkdownLong(w io.Writer, rep Contents, lang string) error {
	l, err := labelsFor(lang)
	if err != nil {
		return err
	}
	rows := l.rows(rep.Runs)
	var b strings.Builder
	b.WriteString("| " + l.caseHeader)
	for _, row := range rows {
		b.WriteString(" | " + row.label)
	}
	b.WriteString(" |\n|---" + strings.Repeat("|--:", len(rows)) + "|\n")
	for _, r := range rep.Runs {
		b.WriteString("| " + escapeCell(column(r)))
		for _, row := range rows {
			b.WriteString(" | " + row.values(r))
		}
		b.WriteString(" |\n")
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the whole report, series included.
func WriteJSON(w io.Writer, rep Contents) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// WriteCSV writes one row per case run with every count and latency, machine-readable (English column names).
func WriteCSV(w io.Writer, rep Contents) error {
	cw := csv.NewWriter(w)
	header := []string{"plan", "case", "run", "prestop_sleep_seconds", "prestop_action", "shutdown", "replicas", "cpu_load", "max_rps",
		"planned", "total", "ok_2xx", "errors"}
	for _, class := range load.ErrorClasses {
		header = append(header, "errors_"+class)
	}
	header = append(header, "error_rate", "mean_ms", "p50_ms", "p90_ms", "p99_ms",
		"rollout_seconds", "rollout_errors", "rollout_error_rate", "rollout_p99_ms")
	if err := cw.Write(header); err != nil {
		return err
	}
	for _, r := range rep.Runs {
		c := r.Conditions
		record := []string{rep.Plan, r.Case, r.Run, formatNumber(c.PreStopSleep.Seconds()), c.PreStopAction, c.Shutdown,
			strconv.Itoa(c.Replicas), strconv.Itoa(c.CPULoad), formatNumber(c.MaxRPS), strconv.FormatInt(c.Planned, 10),
			formatCount(r.Whole.Total), formatCount(r.Whole.OK), formatCount(r.Whole.Errors)}
		for _, class := range load.ErrorClasses {
			record = append(record, formatCount(r.Whole.ByClass[class]))
		}
		record = append(record, formatNumber(r.Whole.ErrorRate), formatNumber(r.Whole.MeanMs), formatNumber(r.Whole.P50Ms),
			formatNumber(r.Whole.P90Ms), formatNumber(r.Whole.P99Ms))
		if r.During != nil {
			record = append(record, formatNumber(r.Rollout.End.Sub(r.Rollout.Start).Seconds()), formatCount(r.During.Errors),
				formatNumber(r.During.ErrorRate), formatNumber(r.During.P99Ms))
		} else {
			record = append(record, "", "", "", "")
		}
		if err := cw.Write(record); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}
