package charts

import (
	"maps"

	"github.com/rollout-lab/rollout-lab/plan"
)

// CowwebValues are the cowweb chart's values for a plan's app settings, the plan's raw values laid over them.
func CowwebValues(app plan.App) map[string]any {
	image := map[string]any{}
	if app.Image.Repository != "" {
		image["repository"] = app.Image.Repository
	}
	if app.Image.Tag != "" {
		image["tag"] = app.Image.Tag
	}
	if app.Image.PullPolicy != "" {
		image["pullPolicy"] = app.Image.PullPolicy
	}
	if len(app.Image.Command) > 0 {
		// As YAML would give it: the schema's validation knows []any, not []string.
		command := make([]any, len(app.Image.Command))
		for i, c := range app.Image.Command {
			command[i] = c
		}
		image["command"] = command
	}
	appValues := map[string]any{
		"port":     app.Port,
		"slow":     app.Slow,
		"load":     app.Load,
		"shutdown": app.Shutdown,
	}
	if app.Delay > 0 {
		appValues["delay"] = app.Delay.String()
	}
	if app.DrainDelay > 0 {
		appValues["drainDelay"] = app.DrainDelay.String()
	}
	if app.ShutdownTimeout > 0 {
		appValues["shutdownTimeout"] = app.ShutdownTimeout.String()
	}
	preStopPort := app.PreStop.Port
	if preStopPort == 0 {
		preStopPort = app.Port
	}
	values := map[string]any{
		"replicaCount": app.Replicas,
		"image":        image,
		"app":          appValues,
		"preStop": map[string]any{
			"type":         app.PreStop.Action,
			"sleepSeconds": int(app.PreStop.Sleep.Seconds()),
			"httpGet":      map[string]any{"path": app.PreStop.Path, "port": preStopPort},
		},
		"terminationGracePeriodSeconds": int(app.TerminationGracePeriod.Seconds()),
		"probes": map[string]any{
			"readiness": probeValues(app.Probes.Readiness),
			"liveness":  probeValues(app.Probes.Liveness),
			"startup":   probeValues(app.Probes.Startup),
		},
		"strategy": map[string]any{
			"maxSurge":       app.Strategy.MaxSurge.Helm(),
			"maxUnavailable": app.Strategy.MaxUnavailable.Helm(),
		},
		"minReadySeconds": int(app.MinReady.Seconds()),
	}
	resources := map[string]any{}
	if r := app.Resources.Requests.Helm(); r != nil {
		resources["requests"] = r
	}
	if l := app.Resources.Limits.Helm(); l != nil {
		resources["limits"] = l
	}
	if len(resources) > 0 {
		values["resources"] = resources
	}
	return mergeValues(values, app.Values)
}

func probeValues(p plan.Probe) map[string]any {
	return map[string]any{
		"enabled":             p.Enabled,
		"path":                p.Path,
		"initialDelaySeconds": int(p.InitialDelay.Seconds()),
		"periodSeconds":       int(p.Period.Seconds()),
		"timeoutSeconds":      int(p.Timeout.Seconds()),
		"successThreshold":    p.SuccessThreshold,
		"failureThreshold":    p.FailureThreshold,
	}
}

// mergeValues lays over on base as Helm merges values files: maps key by key, anything else replaced.
func mergeValues(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	for k, v := range over {
		if sub, ok := v.(map[string]any); ok {
			if baseSub, ok := out[k].(map[string]any); ok {
				out[k] = mergeValues(baseSub, sub)
				continue
			}
		}
		out[k] = v
	}
	return out
}
