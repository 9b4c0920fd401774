package experiment

import (
	"encoding/json"
	"slices"
	"testing"

	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"

	"github.com/rollout-lab/rollout-lab/plan"
)

func TestWorkerJobSharesTheLoadAndPassesRestricted(t *testing.T) {
	p, err := plan.Parse("job.yaml", []byte(`
name: job
target: {kind: kubernetes}
load: {startRate: 3, stages: [{duration: 10s, target: 30}], inCluster: {pods: 3}}
`))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Cases[0]
	job, err := WorkerJob(p, c, 2, "http://cowweb.job.svc:80/say", "v1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if job.Name != "rollout-lab-load-default-2" || *job.Spec.Parallelism != 3 || *job.Spec.Completions != 3 || *job.Spec.BackoffLimit != 0 {
		t.Errorf("job %s: parallelism %d completions %d", job.Name, *job.Spec.Parallelism, *job.Spec.Completions)
	}
	pod := job.Spec.Template
	ctr := pod.Spec.Containers[0]
	if ctr.Image != RunnerImage+":v1.2.3" || pod.Annotations["prometheus.io/scrape"] != "true" || pod.Annotations["prometheus.io/port"] != "9464" {
		t.Errorf("image %s, annotations %v", ctr.Image, pod.Annotations)
	}
	for _, want := range [][]string{{"--share", "3"}, {"--case", "default"}, {"--run", "2"}, {"--plan", "job"}, {"--url", "http://cowweb.job.svc:80/say"}} {
		i := slices.Index(ctr.Args, want[0])
		if i < 0 || ctr.Args[i+1] != want[1] {
			t.Errorf("args %v lack %v", ctr.Args, want)
		}
	}
	// What a worker decodes is the case's load, and its share is a third of every rate.
	var l plan.Load
	if err := json.Unmarshal([]byte(ctr.Args[slices.Index(ctr.Args, "--load")+1]), &l); err != nil {
		t.Fatal(err)
	}
	share := l.Share(3)
	if share.StartRate != 1 || share.Stages[0].Target != 10 || share.Stages[0].Duration != c.Load.Stages[0].Duration || c.Load.Stages[0].Target != 30 {
		t.Errorf("share %+v of %+v", share, c.Load)
	}
	if total := 3 * share.Requests(); total != c.Requests {
		t.Errorf("3 shares send %d, the case %d", total, c.Requests)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range evaluator.EvaluatePod(psaapi.LevelVersion{Level: psaapi.LevelRestricted, Version: psaapi.LatestVersion()}, &pod.ObjectMeta, &pod.Spec) {
		if !r.Allowed {
			t.Errorf("restricted: %s: %s", r.ForbiddenReason, r.ForbiddenDetail)
		}
	}
}
