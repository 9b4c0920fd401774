package experiment

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/rollout-lab/rollout-lab/plan"
	"github.com/rollout-lab/rollout-lab/rundir"
)

// sleepCommand is the exec preStop hook the chart renders (sh -c "sleep N"), as the reference experiment's.
var sleepCommand = regexp.MustCompile(`^sleep (\d+)$`)

// InstalledFrom reads what a release installed from its rendered manifest: the Deployment's replicas, grace
// period, preStop hook and the app's arguments. The report's conditions come from these, not from the plan alone:
// Helm values (app.values) may have changed any of them.
func InstalledFrom(manifest string) (*rundir.Installed, error) {
	for _, doc := range strings.Split(manifest, "\n---") {
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil || head.Kind != "Deployment" {
			continue
		}
		var d appsv1.Deployment
		if err := yaml.Unmarshal([]byte(doc), &d); err != nil {
			return nil, fmt.Errorf("the release's Deployment: %w", err)
		}
		if len(d.Spec.Template.Spec.Containers) == 0 {
			return nil, fmt.Errorf("the release's Deployment %s has no container", d.Name)
		}
		in := &rundir.Installed{Replicas: 1, PreStopAction: plan.PreStopNone, Shutdown: plan.ShutdownGraceful}
		if d.Spec.Replicas != nil {
			in.Replicas = int(*d.Spec.Replicas)
		}
		if g := d.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
			in.GracePeriod = time.Duration(*g) * time.Second
		} else {
			in.GracePeriod = 30 * time.Second // the API's default
		}
		c := d.Spec.Template.Spec.Containers[0]
		readPreStop(in, c.Lifecycle)
		readArgs(in, append(append([]string{}, c.Command...), c.Args...))
		return in, nil
	}
	return nil, fmt.Errorf("the release rendered no Deployment")
}

func readPreStop(in *rundir.Installed, l *corev1.Lifecycle) {
	if l == nil || l.PreStop == nil {
		return
	}
	h := l.PreStop
	switch {
	case h.HTTPGet != nil:
		in.PreStopAction = plan.PreStopHTTPGet
	case h.Sleep != nil:
		in.PreStopAction, in.PreStopSleep = plan.PreStopSleep, time.Duration(h.Sleep.Seconds)*time.Second
	case h.Exec != nil:
		in.PreStopAction = plan.PreStopExec
		if cmd := h.Exec.Command; len(cmd) > 0 {
			if m := sleepCommand.FindStringSubmatch(strings.TrimSpace(cmd[len(cmd)-1])); m != nil {
				seconds, _ := strconv.Atoi(m[1])
				in.PreStopSleep = time.Duration(seconds) * time.Second
			}
		}
	}
}

// readArgs reads cowweb's flags (the project's and v1.1.1's spellings).
func readArgs(in *rundir.Installed, args []string) {
	if !slices.Contains(args, "serve") {
		// Not cowweb's command line (runner check runs any app): its shutdown is what the check finds out.
		in.Shutdown = ""
		return
	}
	slow, load := false, 1024 // cowweb's defaults
	for i := 0; i < len(args); i++ {
		name, value, hasValue := strings.Cut(args[i], "=")
		next := func() string {
			if hasValue {
				return value
			}
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		switch name {
		case "--slow", "-s":
			slow = !hasValue || value == "true"
		case "--load", "-l":
			if n, err := strconv.Atoi(next()); err == nil {
				load = n
			}
		case "--shutdown-gracefully", "-g":
			if hasValue && value == "false" {
				in.Shutdown = plan.ShutdownImmediate
			}
		case "--shutdown":
			in.Shutdown = next()
		case "--drain-delay":
			if d, err := time.ParseDuration(next()); err == nil {
				in.DrainDelay = d
			}
		}
	}
	if slow {
		in.CPULoad = load
	}
}
