package rundir

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rollout-lab/rollout-lab/plan"
)

// run.json travels with results; passwords in the plan's URLs stay out of it.
func TestManifestKeepsNoPasswordsFromURLs(t *testing.T) {
	p, err := plan.Parse("creds.yaml", []byte(`
name: creds
target: {kind: kubernetes, context: c}
load: {rate: 1, duration: 1s, url: 'http://user:s3cret-load@lb.example:8080'}
prometheus: {url: 'https://admin:s3cret-prom@prom.example'}
`))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	m := &Manifest{Kind: "apply", Plan: p, Prometheus: PrometheusInfo{URL: p.Prometheus.URL}}
	if err := m.Save(dir); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"s3cret-load", "s3cret-prom"} {
		if strings.Contains(string(data), secret) {
			t.Errorf("run.json holds %s", secret)
		}
	}
	if !strings.Contains(string(data), "http://user:xxxxx@lb.example:8080") {
		t.Errorf("run.json lost the URL itself:\n%s", data)
	}
	if p.Cases[0].Load.URL != "http://user:s3cret-load@lb.example:8080" {
		t.Errorf("saving changed the plan in use: %s", p.Cases[0].Load.URL)
	}
}
