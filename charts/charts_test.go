package charts

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"

	"github.com/rollout-lab/rollout-lab/plan"
)

type rendered struct {
	deployment *appsv1.Deployment
	service    *corev1.Service
	kinds      []string
}

func render(t *testing.T, values map[string]any) rendered {
	t.Helper()
	c, err := Cowweb()
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := Render(c, "cowweb", "lab", values)
	if err != nil {
		t.Fatal(err)
	}
	var out rendered
	for _, doc := range strings.Split(manifest, "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var u map[string]any
		if err := yaml.Unmarshal([]byte(doc), &u); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		kind, _ := u["kind"].(string)
		out.kinds = append(out.kinds, kind)
		if kind == "PodMonitor" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
		if err != nil {
			t.Fatalf("decode %s: %v", kind, err)
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			out.deployment = o
		case *corev1.Service:
			out.service = o
		default:
			t.Fatalf("unexpected object %T", obj)
		}
	}
	if out.deployment == nil || out.service == nil {
		t.Fatalf("want a Deployment and a Service, got %v", out.kinds)
	}
	return out
}

func (r rendered) container() corev1.Container { return r.deployment.Spec.Template.Spec.Containers[0] }

func TestDefaultsReproduceTheReferenceDeployment(t *testing.T) {
	r := render(t, nil)
	d, c := r.deployment, r.container()
	if *d.Spec.Replicas != 8 || *d.Spec.Template.Spec.TerminationGracePeriodSeconds != 60 {
		t.Errorf("replicas %d, grace %d; want 8, 60", *d.Spec.Replicas, *d.Spec.Template.Spec.TerminationGracePeriodSeconds)
	}
	if c.Image != "ghcr.io/hhiroshell/cowweb-go/cowweb:v1.1.1" || !slices.Equal(c.Command, []string{"./cowweb"}) {
		t.Errorf("image %s command %v", c.Image, c.Command)
	}
	wantArgs := []string{"serve", "--port=8080", "--slow", "--load=640", "--shutdown-gracefully=true"}
	if !slices.Equal(c.Args, wantArgs) {
		t.Errorf("args %v, want %v", c.Args, wantArgs)
	}
	p := c.ReadinessProbe
	if p == nil || p.HTTPGet.Path != "/health" || p.InitialDelaySeconds != 10 || p.PeriodSeconds != 1 || p.FailureThreshold != 5 {
		t.Errorf("readiness probe %+v", p)
	}
	if c.LivenessProbe == nil || c.StartupProbe != nil {
		t.Errorf("liveness %v startup %v; want liveness only", c.LivenessProbe, c.StartupProbe)
	}
	if c.Lifecycle != nil {
		t.Errorf("preStop sleep 0 renders no hook, got %+v", c.Lifecycle)
	}
	if r.service.Spec.Type != corev1.ServiceTypeLoadBalancer || r.service.Spec.Ports[0].Port != 80 ||
		r.service.Spec.Ports[0].TargetPort != intstr.FromString("http") || c.Ports[0].ContainerPort != 8080 {
		t.Errorf("service %+v ports %+v", r.service.Spec, c.Ports)
	}
	if env := c.Env[0]; env.Name != "POD_IP" || env.ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("POD_IP from the downward API, got %+v", env)
	}
	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "8080" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v", ann)
	}
	if slices.Contains(r.kinds, "PodMonitor") {
		t.Error("PodMonitor rendered although disabled")
	}
}

func TestPreStopVariants(t *testing.T) {
	exec := render(t, map[string]any{"preStop": map[string]any{"type": "exec", "sleepSeconds": 8}}).container()
	if h := exec.Lifecycle.PreStop; h.Exec == nil || !slices.Equal(h.Exec.Command, []string{"sh", "-c", "sleep 8"}) {
		t.Errorf("exec preStop %+v", h)
	}
	native := render(t, map[string]any{"preStop": map[string]any{"type": "sleep", "sleepSeconds": 8}}).container()
	if h := native.Lifecycle.PreStop; h.Sleep == nil || h.Sleep.Seconds != 8 || h.Exec != nil {
		t.Errorf("native sleep preStop %+v", h)
	}
	get := render(t, map[string]any{"preStop": map[string]any{"type": "httpGet", "httpGet": map[string]any{"path": "/drain", "port": 8080}}}).container()
	if h := get.Lifecycle.PreStop; h.HTTPGet == nil || h.HTTPGet.Path != "/drain" || h.HTTPGet.Port != intstr.FromInt(8080) {
		t.Errorf("httpGet preStop %+v", h)
	}
	// Paths are strings to the template: YAML in them stays text.
	odd := `/drain?x=1#a: b, "c": [d]`
	quoted := render(t, map[string]any{"preStop": map[string]any{"type": "httpGet", "httpGet": map[string]any{"path": odd, "port": "http"}},
		"probes": map[string]any{"readiness": map[string]any{"path": odd}}}).container()
	if h := quoted.Lifecycle.PreStop; h.HTTPGet == nil || h.HTTPGet.Path != odd || h.HTTPGet.Port != intstr.FromString("http") {
		t.Errorf("httpGet preStop with an odd path %+v", h.HTTPGet)
	}
	if p := quoted.ReadinessProbe; p == nil || p.HTTPGet.Path != odd {
		t.Errorf("readiness probe with an odd path %+v", p)
	}
	if none := render(t, map[string]any{"preStop": map[string]any{"type": "none", "sleepSeconds": 8}}).container(); none.Lifecycle != nil {
		t.Errorf("type none renders a hook: %+v", none.Lifecycle)
	}
}

func TestShutdownModesBecomeFlags(t *testing.T) {
	cases := map[string]struct {
		app  map[string]any
		want []string
	}{
		"immediate": {map[string]any{"shutdown": "immediate"}, []string{"--shutdown-gracefully=false"}},
		"graceful":  {map[string]any{"shutdown": "graceful", "shutdownTimeout": "30s"}, []string{"--shutdown-gracefully=true", "--shutdown-timeout=30s"}},
		"drain":     {map[string]any{"shutdown": "drain", "drainDelay": "5s"}, []string{"--shutdown=drain", "--drain-delay=5s"}},
		"fast":      {map[string]any{"slow": false, "load": 1024}, []string{"--load=1024", "--shutdown-gracefully=true"}},
		"delayed":   {map[string]any{"delay": "200ms"}, []string{"--delay=200ms"}},
	}
	for name, c := range cases {
		args := render(t, map[string]any{"app": c.app}).container().Args
		for _, w := range c.want {
			if !slices.Contains(args, w) {
				t.Errorf("%s: args %v lack %s", name, args, w)
			}
		}
		if name == "fast" && slices.Contains(args, "--slow") {
			t.Errorf("slow false still renders --slow: %v", args)
		}
	}
}

func TestStrategyGraceAndReplicas(t *testing.T) {
	r := render(t, map[string]any{
		"replicaCount":                  3,
		"terminationGracePeriodSeconds": 30,
		"minReadySeconds":               2,
		"strategy":                      map[string]any{"maxSurge": 1, "maxUnavailable": "0%"},
		"probes":                        map[string]any{"startup": map[string]any{"enabled": true, "path": "/health", "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 30}},
		"metrics":                       map[string]any{"podMonitor": map[string]any{"enabled": true, "interval": "1s"}},
	})
	d := r.deployment
	ru := d.Spec.Strategy.RollingUpdate
	if *d.Spec.Replicas != 3 || *d.Spec.Template.Spec.TerminationGracePeriodSeconds != 30 || d.Spec.MinReadySeconds != 2 {
		t.Errorf("replicas %d grace %d minReady %d", *d.Spec.Replicas, *d.Spec.Template.Spec.TerminationGracePeriodSeconds, d.Spec.MinReadySeconds)
	}
	if *ru.MaxSurge != intstr.FromInt(1) || *ru.MaxUnavailable != intstr.FromString("0%") {
		t.Errorf("rolling update %v %v", ru.MaxSurge, ru.MaxUnavailable)
	}
	if sp := r.container().StartupProbe; sp == nil || sp.FailureThreshold != 30 {
		t.Errorf("startup probe %+v", sp)
	}
	if !slices.Contains(r.kinds, "PodMonitor") {
		t.Errorf("PodMonitor enabled but rendered %v", r.kinds)
	}
}

func TestPodPassesRestrictedPodSecurityStandard(t *testing.T) {
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, values := range []map[string]any{nil, {"preStop": map[string]any{"type": "sleep", "sleepSeconds": 8}}} {
		tmpl := render(t, values).deployment.Spec.Template
		results := evaluator.EvaluatePod(psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}, &tmpl.ObjectMeta, &tmpl.Spec)
		for _, r := range results {
			if !r.Allowed {
				t.Errorf("restricted: %s: %s", r.ForbiddenReason, r.ForbiddenDetail)
			}
		}
	}
}

func TestSchemaRejectsBadValues(t *testing.T) {
	c, err := Cowweb()
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range map[string]map[string]any{
		"negative replicas":  {"replicaCount": -1},
		"unknown shutdown":   {"app": map[string]any{"shutdown": "later"}},
		"unknown preStop":    {"preStop": map[string]any{"type": "wait"}},
		"string load":        {"app": map[string]any{"load": "heavy"}},
		"bad surge":          {"strategy": map[string]any{"maxSurge": "lots"}},
		"bad duration":       {"app": map[string]any{"drainDelay": "5 seconds"}},
		"unknown app field":  {"app": map[string]any{"loud": true}},
		"probe period 0":     {"probes": map[string]any{"readiness": map[string]any{"periodSeconds": 0}}},
		"unknown service ty": {"service": map[string]any{"type": "Headless"}},
	} {
		if _, err := Render(c, "cowweb", "lab", values); err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("%s: want a schema error, got %v", name, err)
		}
	}
}

func TestHelmLintIsClean(t *testing.T) {
	for _, values := range []map[string]any{nil, {"preStop": map[string]any{"type": "sleep", "sleepSeconds": 8}, "metrics": map[string]any{"podMonitor": map[string]any{"enabled": true}}}} {
		lint := action.NewLint()
		lint.Strict = true
		lint.Namespace = "lab"
		result := lint.Run([]string{CowwebName}, values)
		for _, err := range result.Errors {
			t.Errorf("lint error: %v", err)
		}
		for _, m := range result.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("lint: %s", m)
			}
		}
		if result.TotalChartsLinted != 1 {
			t.Errorf("linted %d charts", result.TotalChartsLinted)
		}
	}
}

// Every case of every plan in plans/ must become values the chart accepts, rendering what the case says.
func TestEveryPlanCaseRendersWithTheChart(t *testing.T) {
	files, err := filepath.Glob("../plans/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("plans: %v %v", files, err)
	}
	for _, f := range files {
		p, err := plan.LoadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range p.Cases {
			r := render(t, CowwebValues(c.App))
			d, ctr := r.deployment, r.container()
			if int(*d.Spec.Replicas) != c.App.Replicas || *d.Spec.Template.Spec.TerminationGracePeriodSeconds != int64(c.App.TerminationGracePeriod.Seconds()) {
				t.Errorf("%s/%s: replicas %d grace %d", f, c.Name, *d.Spec.Replicas, *d.Spec.Template.Spec.TerminationGracePeriodSeconds)
			}
			if !slices.Contains(ctr.Args, fmt.Sprintf("--load=%d", c.App.Load)) {
				t.Errorf("%s/%s: args %v", f, c.Name, ctr.Args)
			}
			wantGraceful := map[string]string{"graceful": "--shutdown-gracefully=true", "immediate": "--shutdown-gracefully=false", "drain": "--shutdown=drain"}[c.App.Shutdown]
			if !slices.Contains(ctr.Args, wantGraceful) {
				t.Errorf("%s/%s: shutdown %s but args %v", f, c.Name, c.App.Shutdown, ctr.Args)
			}
			sleep := int(c.App.PreStop.Sleep.Seconds())
			switch {
			case sleep == 0 && ctr.Lifecycle != nil:
				t.Errorf("%s/%s: no sleep but hook %+v", f, c.Name, ctr.Lifecycle.PreStop)
			case sleep > 0 && (ctr.Lifecycle == nil || !slices.Equal(ctr.Lifecycle.PreStop.Exec.Command, []string{"sh", "-c", fmt.Sprintf("sleep %d", sleep)})):
				t.Errorf("%s/%s: sleep %d but lifecycle %+v", f, c.Name, sleep, ctr.Lifecycle)
			}
			if got := ctr.ReadinessProbe.InitialDelaySeconds; got != int32(c.App.Probes.Readiness.InitialDelay.Seconds()) {
				t.Errorf("%s/%s: readiness initial delay %d", f, c.Name, got)
			}
		}
	}
}

func TestPlanValuesOverrideGeneratedOnes(t *testing.T) {
	p, err := plan.Parse("v.yaml", []byte("name: v\nload: {rate: 1, duration: 1s}\napp:\n  image: {repository: example.org/cowweb, tag: dev, command: [/app/cowweb]}\n  values:\n    service: {type: ClusterIP}\n    app: {extraArgs: [--verbose]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := render(t, CowwebValues(p.Cases[0].App))
	if r.service.Spec.Type != corev1.ServiceTypeClusterIP || r.container().Image != "example.org/cowweb:dev" || !slices.Equal(r.container().Command, []string{"/app/cowweb"}) ||
		!slices.Contains(r.container().Args, "--verbose") || !slices.Contains(r.container().Args, "--load=640") {
		t.Errorf("service %s image %s args %v", r.service.Spec.Type, r.container().Image, r.container().Args)
	}
}

// A plan's app.resources reach the container as the chart renders it.
func TestPlanResourcesReachTheContainer(t *testing.T) {
	p, err := plan.Parse("res.yaml", []byte("name: res\nload: {rate: 1, duration: 1s}\n"+
		"app: {resources: {requests: {cpu: 0.25, memory: 64Mi}, limits: {cpu: 1}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	app := p.Cases[0].App
	if app.Resources.Requests.CPU != 250 || app.Resources.Limits.CPU != 1000 {
		t.Fatalf("parsed %+v", app.Resources)
	}
	r := render(t, CowwebValues(app)).container().Resources
	if cpu := r.Requests[corev1.ResourceCPU]; cpu.MilliValue() != 250 {
		t.Errorf("request cpu %s", cpu.String())
	}
	if mem := r.Requests[corev1.ResourceMemory]; mem.String() != "64Mi" {
		t.Errorf("request memory %s", mem.String())
	}
	if cpu := r.Limits[corev1.ResourceCPU]; cpu.MilliValue() != 1000 {
		t.Errorf("limit cpu %s", cpu.String())
	}
	app.Resources = plan.Resources{}
	if none := render(t, CowwebValues(app)).container().Resources; len(none.Requests)+len(none.Limits) != 0 {
		t.Errorf("a plan without resources renders %+v", none)
	}
}

// The chart renders a preStop hook exactly when plan.PreStop.Hook says the container gets one.
func TestChartAndPlanAgreeOnThePreStopHook(t *testing.T) {
	for _, action := range []string{"exec", "sleep", "httpGet", "none"} {
		for _, sleep := range []plan.Duration{0, plan.Duration(3 * time.Second)} {
			p, err := plan.Parse("hook.yaml", []byte(fmt.Sprintf("name: hook\nload: {rate: 1, duration: 1s}\napp: {preStop: {action: %s, sleep: %s}}\n", action, sleep)))
			if err != nil {
				t.Fatal(err)
			}
			app := p.Cases[0].App
			lifecycle := render(t, CowwebValues(app)).container().Lifecycle
			rendered := lifecycle != nil && lifecycle.PreStop != nil
			if rendered != app.PreStop.Hook() {
				t.Errorf("action %s sleep %s: chart renders a hook %v, plan says %v", action, sleep, rendered, app.PreStop.Hook())
			}
		}
	}
}

// Any app, not only cowweb: its own args instead of cowweb's flags, and with no health path a TCP probe of its port.
func TestAnotherAppGetsItsArgsAndTCPProbes(t *testing.T) {
	c := render(t, map[string]any{
		"image":  map[string]any{"repository": "example/app", "tag": "1", "command": []any{"app"}, "args": []any{"--listen", ":9000"}},
		"app":    map[string]any{"cowwebFlags": false, "port": 9000},
		"probes": map[string]any{"readiness": map[string]any{"path": ""}, "liveness": map[string]any{"enabled": false}},
	}).container()
	if !slices.Equal(c.Args, []string{"--listen", ":9000"}) || !slices.Equal(c.Command, []string{"app"}) {
		t.Errorf("command %v args %v", c.Command, c.Args)
	}
	if p := c.ReadinessProbe; p == nil || p.TCPSocket == nil || p.HTTPGet != nil || p.TCPSocket.Port.String() != "http" || c.Ports[0].ContainerPort != 9000 {
		t.Errorf("readiness probe %+v, ports %v", p, c.Ports)
	}
	if c.LivenessProbe != nil {
		t.Errorf("liveness probe %+v, want none", c.LivenessProbe)
	}
	if args := render(t, map[string]any{"app": map[string]any{"cowwebFlags": false}}).container().Args; len(args) != 0 {
		t.Errorf("no args given, got %v", args)
	}
	svc := render(t, map[string]any{"service": map[string]any{"annotations": map[string]any{"service.beta.kubernetes.io/oci-load-balancer-backend-protocol": "HTTP"}}}).service
	if svc.Annotations["service.beta.kubernetes.io/oci-load-balancer-backend-protocol"] != "HTTP" {
		t.Errorf("service annotations %v", svc.Annotations)
	}
}
