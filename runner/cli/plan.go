package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/rollout-lab/rollout-lab/charts"
	"github.com/rollout-lab/rollout-lab/plan"
)

func newValidateCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "validate PLAN...",
		Short:   "Check plans and report every problem with its file, line, column and field",
		Example: `  runner validate plans/*.yaml`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, files []string) error {
			failed := 0
			for _, file := range files {
				p, err := plan.LoadFile(file)
				if err != nil {
					failed++
					fmt.Fprintln(cmd.ErrOrStderr(), err)
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok, plan %s, %d case(s), %d request(s) per run\n", file, p.Name, len(p.Cases), maxRequests(p))
			}
			if failed > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d plan(s) invalid\n", failed, len(files))
				return &exitError{code: ExitError}
			}
			return nil
		},
	}
}

func maxRequests(p *plan.Plan) int64 {
	var most int64
	for _, c := range p.Cases {
		most = max(most, c.Requests)
	}
	return most
}

func newPlanCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "plan PLAN",
		Short: "Show a plan resolved: defaults applied, the matrix expanded, the exact request count of each case",
		Example: `  runner plan plans/l640-rep8-rps200.yaml
  runner plan -o yaml plans/sweep-prestop.yaml`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := plan.LoadFile(args[0])
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch output {
			case "table":
				return writePlanTable(out, p)
			case "yaml":
				enc := yaml.NewEncoder(out)
				enc.SetIndent(2)
				if err := enc.Encode(p); err != nil {
					return err
				}
				return enc.Close()
			case "values":
				return writeValues(out, p)
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			}
			return fmt.Errorf("--output %q: want table, yaml, json or values", output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table, yaml, json, or values (the Helm values of each case)")
	return cmd
}

func writeValues(out io.Writer, p *plan.Plan) error {
	enc := yaml.NewEncoder(out)
	enc.SetIndent(2)
	for _, c := range p.Cases {
		doc := &yaml.Node{}
		if err := doc.Encode(charts.CowwebValues(c.App)); err != nil {
			return err
		}
		doc.HeadComment = fmt.Sprintf("case %s: helm upgrade --install %s charts/cowweb -n %s -f -", c.Name, p.Name, p.Namespace())
		if err := enc.Encode(doc); err != nil {
			return err
		}
	}
	return enc.Close()
}

func writePlanTable(out io.Writer, p *plan.Plan) error {
	fmt.Fprintf(out, "plan %s (%s): target %s, %d repeat(s), report in %s\n", p.Name, p.Source, p.Target.Kind, p.Repeats, p.Report.Lang)
	if p.Description != "" {
		fmt.Fprintf(out, "  %s\n", p.Description)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CASE\tREPLICAS\tLOAD\tSHUTDOWN\tPRESTOP\tGRACE\tARRIVALS\tDURATION\tREQUESTS\tRESTART AT\tEXPECT")
	for _, c := range p.Cases {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", c.Name, c.App.Replicas, cpuLoad(c.App), shutdown(c.App),
			preStop(c.App.PreStop), c.App.TerminationGracePeriod, arrivals(c.Load), c.Load.TotalDuration(), c.Requests,
			restartAt(c), expectations(c.Expect))
	}
	return tw.Flush()
}

func cpuLoad(a plan.App) string {
	if !a.Slow {
		return "off"
	}
	return fmt.Sprint(a.Load)
}

func shutdown(a plan.App) string {
	if a.Shutdown == plan.ShutdownDrain {
		return "drain " + a.DrainDelay.String()
	}
	return a.Shutdown
}

func preStop(p plan.PreStop) string {
	switch {
	case !p.Hook():
		return plan.PreStopNone
	case p.Action == plan.PreStopHTTPGet:
		return "httpGet " + p.Path
	case p.Action == plan.PreStopSleep:
		return "sleep action " + p.Sleep.String()
	}
	return "sh sleep " + p.Sleep.String()
}

func arrivals(l plan.Load) string {
	if len(l.Stages) == 0 {
		return fmt.Sprintf("%g/s", l.Rate)
	}
	parts := []string{fmt.Sprint(l.StartRate)}
	for _, s := range l.Stages {
		parts = append(parts, fmt.Sprintf("%g(%s)", s.Target, s.Duration))
	}
	return strings.Join(parts, "→")
}

func restartAt(c plan.Case) string {
	if !c.Rollout.Restart {
		return "no restart"
	}
	return c.RolloutAt().String()
}

func expectations(e plan.Expect) string {
	var parts []string
	if e.MaxErrors != nil {
		parts = append(parts, fmt.Sprintf("errors≤%d", *e.MaxErrors))
	}
	if e.MaxErrorRate != nil {
		parts = append(parts, fmt.Sprintf("error rate≤%g", *e.MaxErrorRate))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}
