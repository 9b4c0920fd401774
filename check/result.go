package check

import (
	"fmt"
	"io"
	"strings"
)

// Verdict is runner check's answer for one behaviour of an app's shutdown.
type Verdict struct {
	Behaviour string `json:"behaviour"`
	Question  string `json:"question"`
	// Result is what the check concluded: pass, fail, not exercised (the run did not put the behaviour to the test,
	// NotExercised says why), or advice (informs, never fails). OK is true for pass, and for advice that holds.
	Result string `json:"result"`
	OK     bool   `json:"ok"`
	// Advice marks a verdict that informs and never fails the check.
	Advice       bool   `json:"advice,omitempty"`
	NotExercised string `json:"notExercised,omitempty"`
	Figure       string `json:"figure"`
	Fix          string `json:"fix,omitempty"`
}

// Results of a verdict.
const (
	ResultPass         = "pass"
	ResultFail         = "fail"
	ResultNotExercised = "not exercised"
	ResultAdvice       = "advice"
)

// Mark is ✓ (pass, or advice that holds), ✗ (fail) or – (not exercised, or advice that does not hold).
func (v Verdict) Mark() string {
	switch {
	case v.Result == ResultFail:
		return "✗"
	case v.OK:
		return "✓"
	}
	return "–"
}

// WriteVerdicts writes the verdict table: behaviour, mark, the figures behind it and the fix for a ✗.
func WriteVerdicts(w io.Writer, verdicts []Verdict) error {
	var b strings.Builder
	b.WriteString("| | Behaviour | Figures | Fix |\n|:-:|---|---|---|\n")
	for _, v := range verdicts {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", v.Mark(), escapeCell(v.Question), escapeCell(v.Figure), escapeCell(v.Fix))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// escapeCell keeps a Markdown table cell one cell.
func escapeCell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
