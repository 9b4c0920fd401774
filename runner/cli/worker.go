package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/rollout-lab/rollout-lab/load"
	"github.com/rollout-lab/rollout-lab/plan"
)

// WorkerSubcommand is what an in-cluster load Pod runs: `runner worker`.
const WorkerSubcommand = "worker"

func newWorkerCommand() *cobra.Command {
	var (
		loadJSON, url, metricsListen string
		labels                       load.Labels
		share                        int
		linger                       time.Duration
	)
	cmd := &cobra.Command{
		Use:    WorkerSubcommand,
		Hidden: true, // run by the Job `runner apply` creates for in-cluster load
		Short:  "Send a share of a case's load from inside a cluster and serve its metrics for Prometheus",
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l plan.Load
			if err := json.Unmarshal([]byte(loadJSON), &l); err != nil {
				return fmt.Errorf("--load: %w", err)
			}
			if share < 1 || url == "" || labels.Case == "" {
				return errors.New("--url, --case and --share ≥ 1 are required")
			}
			l = l.Share(share)
			reg := prometheus.NewRegistry()
			m := load.NewMetrics(reg)
			srv, _, err := load.ServeMetrics(metricsListen, reg)
			if err != nil {
				return err
			}
			defer srv.Close()
			opts, err := load.OptionsFromPlan(url, l, labels)
			if err != nil {
				return err
			}
			summary, err := load.Attack(cmd.Context(), opts, m)
			if err != nil {
				return err
			}
			if err := json.NewEncoder(cmd.OutOrStdout()).Encode(summary); err != nil {
				return err
			}
			// Prometheus scrapes the final counts before the Pod goes.
			select {
			case <-time.After(linger):
			case <-cmd.Context().Done():
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&loadJSON, "load", "", "the case's load section as JSON")
	f.StringVar(&url, "url", "", "the URL to load")
	f.IntVar(&share, "share", 1, "how many workers share the load: each sends 1/share of the rate")
	f.StringVar(&labels.Plan, "plan", "", "plan label")
	f.StringVar(&labels.Case, "case", "", "case label")
	f.StringVar(&labels.Run, "run", "1", "run label")
	f.StringVar(&metricsListen, "metrics-listen", ":9464", "where the metrics are served")
	f.DurationVar(&linger, "linger", 10*time.Second, "how long to keep serving metrics after the load")
	return cmd
}
