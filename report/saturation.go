package report

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/rollout-lab/rollout-lab/analysis"
)

// saturationReasons says in words why a run's figures describe something other than the plan (see
// analysis.SaturationCauses); empty when nothing did.
func saturationReasons(r analysis.CaseRun, lang string) []string {
	ja := lang == "ja"
	var reasons []string
	for _, c := range r.SaturationCauses() {
		var en, jaText string
		switch c.Kind {
		case analysis.SaturationOverloaded:
			en = fmt.Sprintf("the app fell behind its arrivals: median latency %s ms over the load against %s ms in the warm-up (threshold %.0f× and +%.0f ms)%s",
				formatMs(c.Value), formatMs(c.Threshold), analysis.OverloadedMedianFactor, analysis.OverloadedMedianMarginMs, inFlightNote(r, false))
			jaText = fmt.Sprintf("アプリが到着に追いつかなかった: 負荷全体の中央値レイテンシ %s ms、ウォームアップ %s ms (しきい値 %.0f 倍かつ +%.0f ms)%s",
				formatMs(c.Value), formatMs(c.Threshold), analysis.OverloadedMedianFactor, analysis.OverloadedMedianMarginMs, inFlightNote(r, true))
		case analysis.SaturationLateSending:
			en = fmt.Sprintf("the attacker sent %.1f ms behind schedule at p99 (threshold %.0f ms)", c.Value, c.Threshold)
			jaText = fmt.Sprintf("負荷生成側が予定より p99 %.1f ms 遅れて送信 (しきい値 %.0f ms)", c.Value, c.Threshold)
		case analysis.SaturationMachineBusy:
			en = fmt.Sprintf("the machine's CPUs were busy %s of the time (threshold %s)", percent(c.Value), percent(c.Threshold))
			jaText = fmt.Sprintf("マシンの CPU 使用率 %s (しきい値 %s)", percent(c.Value), percent(c.Threshold))
		case analysis.SaturationNodeThrottled:
			en = fmt.Sprintf("node %s was at its CPU capacity in %s of the CFS periods (threshold %s)", c.Node, percent(c.Value), percent(c.Threshold))
			jaText = fmt.Sprintf("ノード %s が CFS 周期の %s で CPU 容量の上限に達した (しきい値 %s)", c.Node, percent(c.Value), percent(c.Threshold))
		case analysis.SaturationPodsThrottled:
			en = fmt.Sprintf("the app's containers were throttled at their CPU limit in %s of the CFS periods (threshold %s)", percent(c.Value), percent(c.Threshold))
			jaText = fmt.Sprintf("アプリのコンテナが CFS 周期の %s で CPU limit により抑制された (しきい値 %s)", percent(c.Value), percent(c.Threshold))
		}
		reasons = append(reasons, pick(ja, en, jaText))
	}
	return reasons
}

// machineSaturated says whether a run is flagged for the machine (the attacker late, CPUs busy, nodes or Pods
// throttled): the CPU cell carries the ⚠; the app's own overload is marked at its p50.
func machineSaturated(r analysis.CaseRun) bool {
	for _, c := range r.SaturationCauses() {
		if c.Kind != analysis.SaturationOverloaded {
			return true
		}
	}
	return false
}

// inFlightNote names the requests the Pods held at SIGTERM, when counted: a queue shows there too.
func inFlightNote(r analysis.CaseRun, ja bool) string {
	var total, most uint64
	for _, p := range r.InFlight {
		total += p.AtSIGTERM
		most = max(most, p.AtSIGTERM)
	}
	if total == 0 {
		return ""
	}
	return pick(ja, fmt.Sprintf(", %d requests in flight at SIGTERM (up to %d in one Pod)", total, most),
		fmt.Sprintf("、SIGTERM 時の処理中リクエスト %d (Pod あたり最大 %d)", total, most))
}

func pick(ja bool, en, jaText string) string {
	if ja {
		return jaText
	}
	return en
}

func percent(f float64) string { return strconv.FormatFloat(math.Round(f*1000)/10, 'f', -1, 64) + "%" }

// cpuCell is the report's CPU row: machine busy, the busiest node's throttling, the app's throttling.
func cpuCell(c *analysis.CPUUse) string {
	if c == nil {
		return "-"
	}
	parts := make([]string, 0, 3)
	for _, v := range []*float64{c.MachineBusy, c.NodeThrottled, c.PodThrottled} {
		if v == nil {
			parts = append(parts, "-")
			continue
		}
		parts = append(parts, percent(*v))
	}
	return strings.Join(parts, " / ")
}
