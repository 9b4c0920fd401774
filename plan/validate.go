package plan

import (
	"k8s.io/apimachinery/pkg/api/resource"

	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// validator checks one resolved case; loc says which node gave each field its value.
type validator struct {
	d        *decoder
	loc      located
	fallback *yaml.Node // where to point when a field and all its parents came from the defaults
}

// fail reports a problem with field, at the node that set it, or else at the nearest parent the file set.
func (v *validator) fail(field, format string, args ...any) {
	path := field
	for {
		n := v.loc[path]
		if n != nil && n.Line > 0 {
			shown, ok := v.d.paths[n]
			if !ok || path != field {
				shown = field
			}
			v.d.errs = append(v.d.errs, Error{File: v.d.file, Line: n.Line, Column: n.Column, Field: shown, Message: fmt.Sprintf(format, args...)})
			return
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	e := Error{File: v.d.file, Field: field, Message: fmt.Sprintf(format, args...)}
	if v.fallback != nil {
		e.Line, e.Column = v.fallback.Line, v.fallback.Column
	}
	v.d.errs = append(v.d.errs, e)
}

func (v *validator) check(ok bool, field, format string, args ...any) bool {
	if !ok {
		v.fail(field, format, args...)
	}
	return ok
}

func (v *validator) oneOf(value, field string, allowed ...string) bool {
	return v.check(slices.Contains(allowed, value), field, "%q is not one of %s", value, strings.Join(allowed, ", "))
}

func (v *validator) wholeSeconds(d Duration, field string, minimum time.Duration) {
	if v.check(d.D() >= minimum, field, "must be at least %s, got %s", minimum, d) {
		v.check(d.D()%time.Second == 0, field, "Kubernetes takes whole seconds here, got %s", d)
	}
}

func (v *validator) positive(d Duration, field string) {
	v.check(d > 0, field, "must be longer than 0, got %s", d)
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func (d *decoder) validateTop(p *Plan, loc located) {
	v := &validator{d: d, loc: loc}
	switch {
	case p.Name == "":
		v.fail("name", "every plan needs a name (it names the Helm release, the namespace and the results directory)")
	case len(p.Name) > maxNameLen || !dnsLabel.MatchString(p.Name):
		v.fail("name", "%q: use lower-case letters, digits and '-', start and end with a letter or digit, at most %d characters", p.Name, maxNameLen)
	}
	v.oneOf(p.Target.Kind, "target.kind", "lab", "kubernetes")
	if p.Target.Namespace != "" {
		v.check(len(p.Target.Namespace) <= 63 && dnsLabel.MatchString(p.Target.Namespace), "target.namespace", "%q is not a valid namespace name", p.Target.Namespace)
	}
	v.check(p.Repeats >= 1 && p.Repeats <= maxRepeats, "repeats", "must be between 1 and %d, got %d", maxRepeats, p.Repeats)
	v.oneOf(p.Report.Lang, "report.lang", "ja", "en")
	if raw := p.Prometheus.URL; raw != "" {
		u, err := url.Parse(raw)
		v.check(err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "", "prometheus.url", "want an http or https URL, got %q", raw)
	}
	v.check(p.Prometheus.TokenFile == "" || p.Prometheus.URL != "", "prometheus.tokenFile", "is for prometheus.url, which is not set")
	v.check(p.Lab.Nodes >= 1 && p.Lab.Nodes <= maxNodes, "lab.nodes", "must be between 1 and %d, got %d", maxNodes, p.Lab.Nodes)
	v.oneOf(p.Lab.KubeProxy.Mode, "lab.kubeProxy.mode", "nftables", "iptables")
	v.check(p.Lab.KubeProxy.MinSyncPeriod >= 0 && p.Lab.KubeProxy.MinSyncPeriod.D() <= MaxMinSyncPeriod, "lab.kubeProxy.minSyncPeriod",
		"must be between 0 and %s, got %s", MaxMinSyncPeriod, p.Lab.KubeProxy.MinSyncPeriod)
	v.check(p.Lab.KubeProxy.SyncPeriod > 0, "lab.kubeProxy.syncPeriod", "must be longer than 0 (kube-proxy's validation), got %s", p.Lab.KubeProxy.SyncPeriod)
	v.oneOf(p.Lab.LoadBalancer.Mode, "lab.loadBalancer.mode", "tcp", "http")
	v.check(p.Lab.NodeCPU == 0 || p.Lab.NodeCPU >= 10, "lab.nodeCPU", "must be at least 10m (the kernel's smallest quota is 1 ms in 100), got %s", p.Lab.NodeCPU)
	v.check(p.Lab.LoadBalancer.IdleTimeout > 0, "lab.loadBalancer.idleTimeout", "must be longer than 0, got %s", p.Lab.LoadBalancer.IdleTimeout)
	d.playProfile(p, v, loc)
	v.check(p.Lab.Background.Services >= 0 && p.Lab.Background.Services <= MaxBackgroundServices, "lab.background.services",
		"must be between 0 and %d (the lab's Service range), got %d", MaxBackgroundServices, p.Lab.Background.Services)
	v.check(p.Lab.Background.EndpointsPerService >= 1 && p.Lab.Background.EndpointsPerService <= MaxEndpointsPerService, "lab.background.endpointsPerService",
		"must be between 1 and %d (one EndpointSlice per Service), got %d", MaxEndpointsPerService, p.Lab.Background.EndpointsPerService)
	for image, argv := range p.Lab.Images {
		v.check(len(argv) > 0 && argv[0] != "", "lab.images."+image, "give the command that plays the image, e.g. [/usr/local/bin/myapp]")
	}
}

// playProfile lets a plan's profile set the lab's kube-proxy and background; a plan that also sets either itself
// is told to choose, so no run plays a mix nobody measured.
func (d *decoder) playProfile(p *Plan, v *validator, loc located) {
	prof := p.Lab.Profile
	if prof == nil {
		return
	}
	for _, field := range []string{"lab.kubeProxy", "lab.background"} {
		if n := loc[field]; n != nil && n.Line > 0 {
			v.fail(field, "the profile (%s) sets it; a plan that plays a profile leaves %s out", prof.Source, field)
		}
	}
	p.Lab.KubeProxy = KubeProxy{Mode: prof.KubeProxy.Mode, MinSyncPeriod: prof.KubeProxy.MinSyncPeriod, SyncPeriod: prof.KubeProxy.SyncPeriod}
	p.Lab.Background = prof.Background()
}

// MaxMinSyncPeriod bounds kube-proxy's minSyncPeriod in a plan: a deleted Pod's address is quarantined for two
// minutes before another Pod gets it (lab/cni), which must outlast any node still routing to it.
const MaxMinSyncPeriod = time.Minute

// maxWorkerPods bounds an in-cluster load's Job.
const maxWorkerPods = 100

// validateLoadURL checks load.url and load.inCluster against the target: a cluster needs an address or in-cluster
// workers (which default to the Service's cluster DNS name); the lab needs neither.
func (v *validator) validateLoadURL(l Load, targetKind, urlField string) {
	raw, inCluster := l.URL, l.InCluster.Pods > 0
	v.check(l.InCluster.Pods >= 0 && l.InCluster.Pods <= maxWorkerPods, "load.inCluster.pods", "must be between 0 and %d, got %d", maxWorkerPods, l.InCluster.Pods)
	switch {
	case targetKind == "lab" && inCluster:
		v.fail("load.inCluster.pods", "only with target kind kubernetes: in the lab load goes through its own Service dataplane")
	case targetKind == "lab" && raw != "":
		v.fail(urlField, "only with target kind kubernetes: the lab sends load through its own Service dataplane")
	case targetKind == "kubernetes" && raw == "" && !inCluster:
		v.fail(urlField, "required with target kind kubernetes: where the Service is reachable from the runner, e.g. http://203.0.113.10 (LoadBalancer), an Ingress host, or a node's address with the NodePort (or --load-url)")
	case raw != "":
		u, err := url.Parse(raw)
		v.check(err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != "" && (u.Path == "" || u.Path == "/") && u.RawQuery == "",
			urlField, "want scheme://host[:port] with http or https and no path (load.path is appended), got %q", raw)
	}
}

// validateCase checks a case and returns the number of requests its load sends.
func (v *validator) validateCase(c *Case) int64 {
	v.validateApp(&c.App)
	requests := v.validateLoad(&c.Load)
	loadDuration := c.Load.TotalDuration()
	if c.Rollout.At != nil {
		at := c.Rollout.At.D()
		v.check(at >= 0, "rollout.at", "must not be negative, got %s", at)
		if loadDuration > 0 {
			v.check(at < loadDuration, "rollout.at", "%s is not before the load ends (the load lasts %s)", at, loadDuration)
		}
	}
	v.positive(c.Rollout.Timeout, "rollout.timeout")
	if e := c.Expect.MaxErrors; e != nil {
		v.check(*e >= 0, "expect.maxErrors", "must not be negative, got %d", *e)
	}
	if r := c.Expect.MaxErrorRate; r != nil {
		v.check(*r >= 0 && *r <= 1, "expect.maxErrorRate", "is a fraction between 0 and 1, got %g", *r)
	}
	return requests
}

func (v *validator) validateApp(a *App) {
	v.check(a.Replicas >= 1, "app.replicas", "must be at least 1, got %d", a.Replicas)
	v.check(a.Port >= 1 && a.Port <= 65535, "app.port", "must be a port number 1-65535, got %d", a.Port)
	v.check(a.Load >= 0, "app.load", "must not be negative, got %d", a.Load)
	v.check(a.Delay >= 0, "app.delay", "must not be negative, got %s", a.Delay)
	v.oneOf(a.Shutdown, "app.shutdown", ShutdownGraceful, ShutdownImmediate, ShutdownDrain)
	if v.check(a.DrainDelay >= 0, "app.drainDelay", "must not be negative, got %s", a.DrainDelay) && a.DrainDelay > 0 {
		v.check(a.Shutdown == ShutdownDrain, "app.drainDelay", "only applies with shutdown: drain (shutdown is %s)", a.Shutdown)
	}
	v.check(a.ShutdownTimeout >= 0, "app.shutdownTimeout", "must not be negative, got %s", a.ShutdownTimeout)
	if req, lim := a.Resources.Requests.CPU, a.Resources.Limits.CPU; req > 0 && lim > 0 {
		v.check(lim >= req, "app.resources.limits.cpu", "must not be less than the request (%s), got %s", req, lim)
	}
	if req, lim := a.Resources.Requests.Memory, a.Resources.Limits.Memory; req != "" && lim != "" {
		limit, request := resource.MustParse(string(lim)), resource.MustParse(string(req))
		v.check(limit.Cmp(request) >= 0, "app.resources.limits.memory",
			"must not be less than the request (%s), got %s", req, lim)
	}
	if a.Image.PullPolicy != "" {
		v.oneOf(a.Image.PullPolicy, "app.image.pullPolicy", "Always", "IfNotPresent", "Never")
	}
	v.oneOf(a.PreStop.Action, "app.preStop.action", PreStopExec, PreStopSleep, PreStopHTTPGet, PreStopNone)
	v.wholeSeconds(a.PreStop.Sleep, "app.preStop.sleep", 0)
	if a.PreStop.Hook() && a.PreStop.Action != PreStopHTTPGet {
		// The grace period counts from the deletion, the hook included: the kubelet cuts a longer hook, sends SIGTERM
		// and kills the container 2 s later. A plan asking for that measures the cut, not the sleep it names.
		v.check(a.PreStop.Sleep < a.TerminationGracePeriod, "app.preStop.sleep",
			"%s is not shorter than app.terminationGracePeriod (%s): the kubelet would cut the hook at the end of the grace period, then SIGKILL 2 s after SIGTERM; lengthen the grace period or shorten the sleep",
			a.PreStop.Sleep, a.TerminationGracePeriod)
	}
	if a.PreStop.Action == PreStopHTTPGet {
		v.check(strings.HasPrefix(a.PreStop.Path, "/"), "app.preStop.path", "must start with /, got %q", a.PreStop.Path)
		v.check(a.PreStop.Port >= 0 && a.PreStop.Port <= 65535, "app.preStop.port", "must be a port number (0 for the app's port), got %d", a.PreStop.Port)
	}
	v.wholeSeconds(a.TerminationGracePeriod, "app.terminationGracePeriod", 0)
	for name, p := range map[string]Probe{"readiness": a.Probes.Readiness, "liveness": a.Probes.Liveness, "startup": a.Probes.Startup} {
		if !p.Enabled {
			continue
		}
		field := "app.probes." + name
		v.check(p.Path == "" || strings.HasPrefix(p.Path, "/"), field+".path", "must start with / (or be empty: a TCP connect to the app's port), got %q", p.Path)
		v.wholeSeconds(p.InitialDelay, field+".initialDelay", 0)
		v.wholeSeconds(p.Period, field+".period", time.Second)
		v.wholeSeconds(p.Timeout, field+".timeout", time.Second)
		v.check(p.FailureThreshold >= 1, field+".failureThreshold", "must be at least 1, got %d", p.FailureThreshold)
		if name == "readiness" {
			v.check(p.SuccessThreshold >= 1, field+".successThreshold", "must be at least 1, got %d", p.SuccessThreshold)
		} else {
			v.check(p.SuccessThreshold == 1, field+".successThreshold", "must be 1 for %s probes, got %d", name, p.SuccessThreshold)
		}
	}
	surge := v.check(a.Strategy.MaxSurge.valid(), "app.strategy.maxSurge", "want a count or a percentage such as 25%%, got %q", a.Strategy.MaxSurge)
	unavailable := v.check(a.Strategy.MaxUnavailable.valid(), "app.strategy.maxUnavailable", "want a count or a percentage such as 25%%, got %q", a.Strategy.MaxUnavailable)
	if surge && unavailable {
		v.check(!a.Strategy.MaxSurge.isZero() || !a.Strategy.MaxUnavailable.isZero(), "app.strategy", "maxSurge and maxUnavailable cannot both be 0: the rollout could never progress")
	}
	v.wholeSeconds(a.MinReady, "app.minReady", 0)
}

func (v *validator) validateLoad(l *Load) int64 {
	v.check(strings.HasPrefix(l.Path, "/"), "load.path", "must start with /, got %q", l.Path)
	if v.oneOf(l.Method, "load.method", "GET", "POST") && l.Method == "GET" {
		v.check(l.Body == "", "load.body", "a GET sends no body; use method: POST")
	}
	v.positive(l.Timeout, "load.timeout")
	v.oneOf(l.Connection, "load.connection", ConnectionPerUser, ConnectionPooled)
	v.check(l.ThinkTime >= 0 && l.ThinkTime.D() <= time.Minute, "load.thinkTime", "must be between 0 and 1m, got %s", l.ThinkTime)
	v.check(l.ThinkTime == 0 || l.Connection == ConnectionPerUser, "load.thinkTime", "is for connection: per-user")
	v.check(l.Connections >= 1, "load.connections", "must be at least 1, got %d", l.Connections)
	v.check(l.Workers >= 1, "load.workers", "must be at least 1, got %d", l.Workers)
	v.check(l.MaxWorkers == 0 || l.MaxWorkers >= l.Workers, "load.maxWorkers", "must be 0 (no bound) or at least workers (%d), got %d", l.Workers, l.MaxWorkers)
	v.check(l.StartRate >= 0, "load.startRate", "must not be negative, got %g", l.StartRate)
	constant := l.Rate != 0 || l.Duration != 0
	switch {
	case len(l.Stages) > 0 && constant:
		v.fail("load", "set either stages or rate with duration, not both")
		return 0
	case len(l.Stages) == 0 && !constant:
		v.fail("load", "set the arrival rate: stages (with startRate), or rate with duration")
		return 0
	case constant:
		ok := v.check(l.Rate > 0, "load.rate", "must be more than 0 requests per second, got %g", l.Rate)
		ok = v.check(l.Duration > 0, "load.duration", "must be longer than 0, got %s", l.Duration) && ok
		if !ok {
			return 0
		}
	default:
		ok := true
		for i, s := range l.Stages {
			field := fmt.Sprintf("load.stages[%d]", i)
			ok = v.check(s.Duration > 0, field+".duration", "must be longer than 0, got %s", s.Duration) && ok
			ok = v.check(s.Target >= 0, field+".target", "must not be negative, got %g", s.Target) && ok
		}
		if !ok {
			return 0
		}
	}
	total := l.TotalDuration()
	if !v.check(total <= maxDuration, "load", "lasts %s, more than the %s a plan may run", total, maxDuration) {
		return 0
	}
	if arrivals := Arrivals(l.Segments()); !v.check(arrivals <= maxRequests, "load", "sends %.0f requests, more than the %d a plan may send", arrivals, maxRequests) {
		return 0
	}
	requests := l.Requests()
	v.check(requests >= 1, "load", "the arrival rate sends no request")
	return requests
}
