package experiment

import (
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/charts"
	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// The report's conditions are what the chart rendered, Helm values included, not the plan's fields alone.
func TestInstalledIsReadFromTheRenderedDeployment(t *testing.T) {
	for _, tc := range []struct {
		name, app string
		want      rundir.Installed
	}{
		{"plan fields", "{replicas: 3, load: 640, preStop: {sleep: 5s}, shutdown: immediate, terminationGracePeriod: 20s}",
			rundir.Installed{Replicas: 3, PreStopAction: "exec", PreStopSleep: 5 * time.Second, Shutdown: "immediate", GracePeriod: 20 * time.Second, CPULoad: 640}},
		{"values override the plan", "{replicas: 3, preStop: {sleep: 5s}, values: {replicaCount: 5, preStop: {sleepSeconds: 9}, app: {slow: false}}}",
			rundir.Installed{Replicas: 5, PreStopAction: "exec", PreStopSleep: 9 * time.Second, Shutdown: "graceful", GracePeriod: 60 * time.Second}},
		{"no hook", "{preStop: {sleep: 0s}, shutdown: drain, drainDelay: 3s}",
			rundir.Installed{Replicas: 8, PreStopAction: "none", Shutdown: "drain", DrainDelay: 3 * time.Second, GracePeriod: 60 * time.Second, CPULoad: 640}},
		{"native sleep", "{preStop: {action: sleep, sleep: 4s}}",
			rundir.Installed{Replicas: 8, PreStopAction: "sleep", PreStopSleep: 4 * time.Second, Shutdown: "graceful", GracePeriod: 60 * time.Second, CPULoad: 640}},
		{"another app (runner check)", "{replicas: 3, image: {repository: example/app, command: [app]}, values: {app: {cowwebFlags: false}}}",
			rundir.Installed{Replicas: 3, PreStopAction: "none", GracePeriod: 60 * time.Second}},
	} {
		p, err := plan.Parse("installed.yaml", []byte("name: installed\nload: {rate: 1, duration: 1s}\napp: "+tc.app+"\n"))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		chart, err := charts.Cowweb()
		if err != nil {
			t.Fatal(err)
		}
		manifest, err := charts.Render(chart, ReleaseName, "ns", charts.CowwebValues(p.Cases[0].App))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := InstalledFrom(manifest)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if *got != tc.want {
			t.Errorf("%s: installed %+v, want %+v", tc.name, *got, tc.want)
		}
	}
}
