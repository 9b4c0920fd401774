package plan

import (
	"errors"
	"strings"
	"testing"
)

const okLoad = "load: {rate: 10, duration: 10s}\n"

// Each bad plan must fail with an error at the given position naming the field, and never panic.
var badPlans = []struct {
	name, yaml string
	want       []string // substrings of the error, each in one line of it: "line:col: field: message"
}{
	{"empty file", "", []string{"bad.yaml: the plan is empty"}},
	{"only a comment", "# nothing\n", []string{"the plan is empty"}},
	{"null document", "~\n", []string{"the plan is empty"}},
	{"not a mapping", "- a\n- b\n", []string{"bad.yaml:1:1: a plan is a mapping"}},
	{"two documents", "name: a\n" + okLoad + "---\nname: b\n", []string{"bad.yaml:3:1: a plan file holds one YAML document"}},
	{"syntax error", "name: a\nload: {rate: 10\n", []string{"bad.yaml:2: YAML syntax: did not find expected ',' or '}'"}},
	{"bad indentation", "name: a\napp:\n  replicas: 1\n port: 2\n", []string{"bad.yaml:4: YAML syntax: did not find expected key"}},
	{"tab indentation", "name: a\napp:\n\treplicas: 2\n", []string{"bad.yaml:3: YAML syntax", "a tab?"}},
	{"unknown top-level field", "name: a\n" + okLoad + "replica: 3\n", []string{`bad.yaml:3:1: replica: unknown field "replica"`}},
	{"unknown nested field", "name: a\n" + okLoad + "app:\n  prestop: {sleep: 8s}\n", []string{`bad.yaml:4:3: app.prestop: unknown field "prestop"`, "preStop"}},
	{"unknown field in a case override", "name: a\n" + okLoad + "cases:\n  - name: c\n    app: {replica: 2}\n", []string{`bad.yaml:5:11: cases[0].app.replica: unknown field "replica"`}},
	{"unknown field in a case", "name: a\n" + okLoad + "cases:\n  - name: c\n    sleep: 8s\n", []string{`bad.yaml:5:5: cases[0].sleep: unknown field "sleep"`}},
	{"duplicate key", "name: a\nname: b\n" + okLoad, []string{`bad.yaml:2:1: name: field "name" is set twice`}},
	{"replicas a string", "name: a\n" + okLoad + "app: {replicas: many}\n", []string{`bad.yaml:3:17: app.replicas: want an integer, got the string "many"`}},
	{"replicas a float", "name: a\n" + okLoad + "app: {replicas: 2.5}\n", []string{"bad.yaml:3:17: app.replicas: want an integer, got float 2.5"}},
	{"slow not a bool", "name: a\n" + okLoad + "app: {slow: yes}\n", []string{`app.slow: want true or false, got the string "yes"`}},
	{"app a list", "name: a\n" + okLoad + "app: [1]\n", []string{"bad.yaml:3:6: app: want a mapping, got a list"}},
	{"duration without unit", "name: a\n" + okLoad + "app: {preStop: {sleep: 8}}\n", []string{"bad.yaml:3:24: app.preStop.sleep: want a duration with a unit such as 8s"}},
	{"bad duration", "name: a\n" + okLoad + "app: {terminationGracePeriod: 1 minute}\n", []string{`app.terminationGracePeriod: want a duration with a unit such as 8s or 1m30s, got "1 minute"`}},
	{"zero replicas", "name: a\n" + okLoad + "app: {replicas: 0}\n", []string{"bad.yaml:3:17: app.replicas: must be at least 1, got 0"}},
	{"negative preStop sleep", "name: a\n" + okLoad + "app: {preStop: {sleep: -1s}}\n", []string{"bad.yaml:3:24: app.preStop.sleep: must be at least 0s, got -1s"}},
	{"fractional grace period", "name: a\n" + okLoad + "app: {terminationGracePeriod: 1500ms}\n", []string{"app.terminationGracePeriod: Kubernetes takes whole seconds here, got 1.5s"}},
	{"unknown shutdown", "name: a\n" + okLoad + "app: {shutdown: later}\n", []string{`bad.yaml:3:17: app.shutdown: "later" is not one of graceful, immediate, drain`}},
	{"url in the lab", "name: a\nload: {rate: 10, duration: 10s, url: 'http://x'}\n", []string{"bad.yaml:2:38: load.url: only with target kind kubernetes"}},
	{"cluster without url", "name: a\ntarget: {kind: kubernetes, context: kind-a}\n" + okLoad, []string{"load.url: required with target kind kubernetes"}},
	{"url with a path", "name: a\ntarget: {kind: kubernetes}\nload: {rate: 10, duration: 10s, url: 'http://x/say'}\n", []string{`bad.yaml:3:38: load.url: want scheme://host[:port] with http or https and no path (load.path is appended), got "http://x/say"`}},
	{"in-cluster load in the lab", "name: a\nload: {rate: 10, duration: 10s, inCluster: {pods: 2}}\n", []string{"bad.yaml:2:51: load.inCluster.pods: only with target kind kubernetes"}},
	{"bad prometheus url", "name: a\nprometheus: {url: 'localhost:9090'}\n" + okLoad, []string{`bad.yaml:2:19: prometheus.url: want an http or https URL, got "localhost:9090"`}},
	{"negative delay", "name: a\n" + okLoad + "app: {delay: -1s}\n", []string{"bad.yaml:3:14: app.delay: must not be negative, got -1s"}},
	{"unknown method", "name: a\nload: {rate: 10, duration: 10s, method: PUT}\n", []string{`bad.yaml:2:41: load.method: "PUT" is not one of GET, POST`}},
	{"GET with a body", "name: a\nload: {rate: 10, duration: 10s, body: moo}\n", []string{"bad.yaml:2:39: load.body: a GET sends no body; use method: POST"}},
	{"drain delay without drain", "name: a\n" + okLoad + "app: {drainDelay: 5s}\n", []string{"bad.yaml:3:19: app.drainDelay: only applies with shutdown: drain"}},
	{"unknown preStop action", "name: a\n" + okLoad + "app: {preStop: {action: wait}}\n", []string{`app.preStop.action: "wait" is not one of exec, sleep, httpGet, none`}},
	{"both surge and unavailable zero", "name: a\n" + okLoad + "app: {strategy: {maxSurge: 0, maxUnavailable: 0%}}\n", []string{"bad.yaml:3:17: app.strategy: maxSurge and maxUnavailable cannot both be 0"}},
	{"bad surge", "name: a\n" + okLoad + "app: {strategy: {maxSurge: lots}}\n", []string{`app.strategy.maxSurge: want a count or a percentage such as 25%, got "lots"`}},
	{"probe period zero", "name: a\n" + okLoad + "app: {probes: {readiness: {period: 0s}}}\n", []string{"app.probes.readiness.period: must be at least 1s, got 0s"}},
	{"liveness success threshold", "name: a\n" + okLoad + "app: {probes: {liveness: {successThreshold: 2}}}\n", []string{"app.probes.liveness.successThreshold: must be 1 for liveness probes"}},
	{"zero rate", "name: a\nload: {rate: 0, duration: 10s}\n", []string{"bad.yaml:2:14: load.rate: must be more than 0 requests per second, got 0"}},
	{"negative rate", "name: a\nload: {rate: -5, duration: 10s}\n", []string{"load.rate: must be more than 0 requests per second, got -5"}},
	{"zero duration", "name: a\nload: {rate: 5, duration: 0s}\n", []string{"bad.yaml:2:27: load.duration: must be longer than 0, got 0s"}},
	{"no rate at all", "name: a\n", []string{"bad.yaml: load: set the arrival rate"}},
	{"stages and rate", "name: a\nload:\n  rate: 5\n  duration: 5s\n  stages: [{duration: 5s, target: 5}]\n", []string{"bad.yaml:3:3: load: set either stages or rate with duration, not both"}},
	{"zero stage duration", "name: a\nload:\n  stages:\n    - {duration: 0s, target: 5}\n", []string{"bad.yaml:4:18: load.stages[0].duration: must be longer than 0"}},
	{"negative stage target", "name: a\nload:\n  stages:\n    - {duration: 5s, target: -1}\n", []string{"bad.yaml:4:30: load.stages[0].target: must not be negative"}},
	{"stages that send nothing", "name: a\nload:\n  stages:\n    - {duration: 5s, target: 0}\n", []string{"load: the arrival rate sends no request"}},
	{"stage unknown field", "name: a\nload:\n  stages:\n    - {duration: 5s, rate: 5}\n", []string{`bad.yaml:4:22: load.stages[0].rate: unknown field "rate"`}},
	{"load path without slash", "name: a\nload: {rate: 1, duration: 1s, path: say}\n", []string{`load.path: must start with /, got "say"`}},
	{"rollout after the load", "name: a\n" + okLoad + "rollout: {at: 10s}\n", []string{"bad.yaml:3:15: rollout.at: 10s is not before the load ends (the load lasts 10s)"}},
	{"rollout at negative", "name: a\n" + okLoad + "rollout: {at: -1s}\n", []string{"rollout.at: must not be negative"}},
	{"rollout timeout zero", "name: a\n" + okLoad + "rollout: {timeout: 0s}\n", []string{"rollout.timeout: must be longer than 0"}},
	{"missing name", okLoad, []string{"bad.yaml: name: every plan needs a name"}},
	{"bad name", "name: My_Plan\n" + okLoad, []string{`bad.yaml:1:7: name: "My_Plan": use lower-case letters`}},
	{"unknown target", "name: a\n" + okLoad + "target: {kind: minikube}\n", []string{`target.kind: "minikube" is not one of lab, kubernetes`}},
	{"zero repeats", "name: a\n" + okLoad + "repeats: 0\n", []string{"bad.yaml:3:10: repeats: must be between 1 and 100, got 0"}},
	{"unknown language", "name: a\n" + okLoad + "report: {lang: fr}\n", []string{`report.lang: "fr" is not one of ja, en`}},
	{"duplicate case names", "name: a\n" + okLoad + "cases:\n  - name: x\n  - name: x\n", []string{`bad.yaml:5:11: cases[1].name: case name "x" is used twice (first at line 4)`}},
	{"case without a name", "name: a\n" + okLoad + "cases:\n  - app: {replicas: 2}\n", []string{"bad.yaml:4:5: cases[0]: every case needs a name"}},
	{"bad case name", "name: a\n" + okLoad + "cases:\n  - name: Slow Case\n", []string{`cases[0].name: case name "Slow Case"`}},
	{"empty case list", "name: a\n" + okLoad + "cases: []\n", []string{"cases: the plan has no case"}},
	{"error rate above one", "name: a\n" + okLoad + "expect: {maxErrorRate: 5}\n", []string{"expect.maxErrorRate: is a fraction between 0 and 1, got 5"}},
	{"negative max errors", "name: a\n" + okLoad + "cases:\n  - name: c\n    expect: {maxErrors: -1}\n", []string{"bad.yaml:5:25: cases[0].expect.maxErrors: must not be negative"}},
	{"case override with a bad value", "name: a\n" + okLoad + "cases:\n  - name: c\n    app: {preStop: {sleep: 1.5s}}\n", []string{"bad.yaml:5:28: cases[0].app.preStop.sleep: Kubernetes takes whole seconds here"}},
	{"matrix unknown field path", "name: a\n" + okLoad + "matrix:\n  params:\n    app.sleep: [1s]\n", []string{`bad.yaml:5:5: matrix.params.app.sleep: "app.sleep" is not a settings field`}},
	{"matrix value not a list", "name: a\n" + okLoad + "matrix:\n  params:\n    app.preStop.sleep: 8s\n", []string{"matrix.params.app.preStop.sleep: want a non-empty list of values"}},
	{"matrix bad value", "name: a\n" + okLoad + "matrix:\n  params:\n    app.replicas: [2, two]\n", []string{`bad.yaml:5:23: matrix.params.app.replicas[1]: want an integer, got the string "two"`}},
	{"matrix without params", "name: a\n" + okLoad + "matrix: {name: x}\n", []string{"bad.yaml:3:9: matrix: the matrix needs params"}},
	{"helm values not a mapping", "name: a\n" + okLoad + "app: {values: [1, 2]}\n", []string{"app.values: want a mapping of Helm values, got a list"}},
	{"too many requests", "name: a\nload: {rate: 100000, duration: 2h}\n", []string{"load: sends 720000000 requests, more than the 100000000"}},
	{"zero lab nodes", "name: a\n" + okLoad + "lab: {nodes: 0}\n", []string{"bad.yaml:3:14: lab.nodes: must be between 1 and 16, got 0"}},
	{"preStop sleep beyond the grace period", "name: a\n" + okLoad + "app: {preStop: {sleep: 30s}, terminationGracePeriod: 30s}\n", []string{"app.preStop.sleep: 30s is not shorter than app.terminationGracePeriod (30s): the kubelet would cut the hook"}},
	{"node CPU not a quantity", "name: a\n" + okLoad + "lab: {nodeCPU: lots}\n", []string{"bad.yaml:3:16: lab.nodeCPU: want CPU as Kubernetes writes it, such as 500m, 1 or 1.5, got \"lots\""}},
	{"node CPU too small", "name: a\n" + okLoad + "lab: {nodeCPU: 5m}\n", []string{"lab.nodeCPU: must be at least 10m"}},
	{"CPU limit below request", "name: a\n" + okLoad + "app: {resources: {requests: {cpu: 500m}, limits: {cpu: 0.25}}}\n", []string{"app.resources.limits.cpu: must not be less than the request (500m), got 250m"}},
	{"memory not a quantity", "name: a\n" + okLoad + "app: {resources: {limits: {memory: big}}}\n", []string{"app.resources.limits.memory: want a quantity such as 256Mi, got \"big\""}},
	{"service-out model retired", "name: a\n" + okLoad + "lab: {serviceOut: {min: 2s, max: 1s}}\n", []string{"bad.yaml:3:19: lab.serviceOut: retired: the lab runs the real kube-proxy", "set lab.kubeProxy {mode, minSyncPeriod, syncPeriod}"}},
	{"kube-proxy mode unknown", "name: a\n" + okLoad + "lab: {kubeProxy: {mode: ipvs}}\n", []string{"lab.kubeProxy.mode"}},
	{"kube-proxy min sync unbounded", "name: a\n" + okLoad + "lab: {kubeProxy: {minSyncPeriod: 10m}}\n", []string{"lab.kubeProxy.minSyncPeriod: must be between 0 and 1m0s"}},
	{"unknown connection model", "name: a\nload: {rate: 1, duration: 1s, connection: shared}\n", []string{`bad.yaml:2:43: load.connection: "shared" is not one of per-user, pooled`}},
	{"think time with a pool", "name: a\nload: {rate: 1, duration: 1s, connection: pooled, thinkTime: 1s}\n", []string{"load.thinkTime: is for connection: per-user"}},
	{"unknown balancer", "name: a\n" + okLoad + "lab: {loadBalancer: {mode: udp}}\n", []string{`bad.yaml:3:28: lab.loadBalancer.mode: "udp" is not one of tcp, http`}},
	{"lab image without command", "name: a\n" + okLoad + "lab: {images: {example/app: []}}\n", []string{"lab.images.example/app: give the command"}},
	{"lab image command not a list", "name: a\n" + okLoad + "lab: {images: {example/app: /bin/app}}\n", []string{`lab.images.example/app: want a list, got the string "/bin/app"`}},
	{"several errors at once", "name: a\n" + okLoad + "app:\n  replicas: -1\n  load: -5\nrepeats: 0\n", []string{
		"bad.yaml:4:13: app.replicas", "bad.yaml:5:9: app.load", "bad.yaml:6:10: repeats"}},
}

func TestBadPlansGiveClearErrors(t *testing.T) {
	if len(badPlans) < 30 {
		t.Fatalf("only %d bad plans", len(badPlans))
	}
	for _, c := range badPlans {
		t.Run(c.name, func(t *testing.T) {
			p, err := Parse("bad.yaml", []byte(c.yaml))
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want ErrorList: %v", err, err)
			}
			for _, want := range c.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q:\n%v", want, err)
				}
			}
			for _, e := range list {
				if e.File != "bad.yaml" || e.Message == "" {
					t.Errorf("error without file or message: %+v", e)
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, c := range badPlans {
		f.Add([]byte(c.yaml))
	}
	for _, good := range []string{"name: a\n" + okLoad, "name: a\nload: {startRate: 1, stages: [{duration: 5s, target: 5}]}\nmatrix: {params: {app.replicas: [1, 2]}}\n"} {
		f.Add([]byte(good))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err == nil {
			if len(p.Cases) == 0 {
				t.Fatalf("accepted a plan without cases")
			}
			for _, c := range p.Cases {
				if c.Requests < 1 || c.Requests > maxRequests {
					t.Fatalf("accepted %d requests", c.Requests)
				}
			}
			return
		}
		var list ErrorList
		if !errors.As(err, &list) || len(list) == 0 {
			t.Fatalf("error is not a non-empty ErrorList: %T %v", err, err)
		}
	})
}
