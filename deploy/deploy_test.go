package deploy

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/prometheus/client_golang/prometheus"
	promconfig "github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"

	"github.com/rollout-lab/rollout-lab/cowweb/app"
	"github.com/rollout-lab/rollout-lab/experiment"
	"github.com/rollout-lab/rollout-lab/lab"
	"github.com/rollout-lab/rollout-lab/load"
)

func loadCompose(t *testing.T, env map[string]string, profiles ...string) *types.Project {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	project, err := loader.LoadWithContext(context.Background(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "docker-compose.yaml")}},
		Environment: env,
	}, loader.WithProfiles(profiles))
	if err != nil {
		t.Fatalf("docker-compose.yaml: %v", err)
	}
	return project
}

var pinnedImage = regexp.MustCompile(`^[a-z0-9./-]+:v?[0-9]+\.[0-9]+\.[0-9]+$`)

// composeEnv is what the README's set-up step puts in .env.
var composeEnv = map[string]string{"GRAFANA_SECRET_GID": "1000"}

func TestComposeLoadsWithPinnedImagesAndExistingFiles(t *testing.T) {
	project := loadCompose(t, composeEnv)
	if project.Name != "rollout-lab" {
		t.Errorf("project name %q", project.Name)
	}
	names := project.ServiceNames()
	slices.Sort(names)
	if !slices.Equal(names, []string{"grafana", "prometheus"}) {
		t.Errorf("default services %v, want grafana and prometheus", names)
	}
	withResults := loadCompose(t, map[string]string{"RUN_TSDB": "/tmp/a-run-tsdb", "GRAFANA_SECRET_GID": "1000"}, "results")
	results, err := withResults.GetService("prometheus-results")
	if err != nil {
		t.Fatal(err)
	}
	if v := results.Volumes[1]; v.Source != "/tmp/a-run-tsdb" || v.Target != "/prometheus" || v.Bind == nil || v.Bind.CreateHostPath {
		t.Errorf("the finished run's TSDB mount: %+v", v)
	}
	for _, s := range withResults.Services {
		if !pinnedImage.MatchString(s.Image) {
			t.Errorf("%s: image %q is not pinned to a release", s.Name, s.Image)
		}
		if s.NetworkMode != "host" {
			t.Errorf("%s: network mode %q; the runner's metrics stay on loopback, so Prometheus needs the host's", s.Name, s.NetworkMode)
		}
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind || v.Source == "/tmp/a-run-tsdb" {
				continue
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Errorf("%s mounts %s: %v", s.Name, v.Source, err)
			}
		}
	}
	grafana, err := project.GetService("grafana")
	if err != nil {
		t.Fatal(err)
	}
	if grafana.Environment["GF_SECURITY_ADMIN_PASSWORD__FILE"] == nil || len(grafana.Secrets) != 1 {
		t.Error("Grafana's admin password must come from a secret file, not the compose file")
	}
	for key, value := range grafana.Environment {
		if value != nil && strings.Contains(strings.ToLower(key), "password") && !strings.HasSuffix(key, "__FILE") {
			t.Errorf("a password in the environment: %s", key)
		}
	}
	// Grafana (uid 472) reads the bind-mounted 0640 secret through the file's group; without it it would keep the
	// default password "admin" without a word.
	if file := grafana.Environment["GF_SECURITY_ADMIN_PASSWORD__FILE"]; file == nil || *file != "/run/secrets/"+grafana.Secrets[0].Source {
		t.Errorf("the password file %v is not where the secret %v is mounted", file, grafana.Secrets)
	}
	if !slices.Equal(grafana.GroupAdd, []string{"1000"}) {
		t.Errorf("group_add %v: Grafana must run with the secret file's group (GRAFANA_SECRET_GID)", grafana.GroupAdd)
	}
	root, _ := filepath.Abs("..")
	_, err = loader.LoadWithContext(context.Background(), types.ConfigDetails{WorkingDir: root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "docker-compose.yaml")}}, Environment: map[string]string{}})
	if err == nil || !strings.Contains(err.Error(), "GRAFANA_SECRET_GID") {
		t.Errorf("without GRAFANA_SECRET_GID the compose file must not load: %v", err)
	}
	prometheus, err := project.GetService("prometheus")
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range prometheus.Command {
		if strings.Contains(arg, "enable-lifecycle") || strings.Contains(arg, "enable-admin-api") {
			t.Errorf("Prometheus with %s: any local page could POST /-/quit", arg)
		}
	}
}

func TestPrometheusConfigScrapesTheRunner(t *testing.T) {
	for _, file := range []string{"prometheus/prometheus.yml", "prometheus/empty.yml"} {
		cfg, err := promconfig.LoadFile(file, false, nil)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if file == "prometheus/prometheus.yml" {
			if len(cfg.ScrapeConfigs) != 1 || cfg.ScrapeConfigs[0].JobName != experiment.MetricsJob {
				t.Errorf("%s: want one job %q", file, experiment.MetricsJob)
			}
			if targets := cfg.ScrapeConfigs[0].ServiceDiscoveryConfigs; len(targets) != 1 {
				t.Errorf("%s: %d target groups", file, len(targets))
			}
		}
	}
}

func TestGrafanaProvisioningPointsAtTheDashboardsAndDatasources(t *testing.T) {
	var ds struct {
		Datasources []struct{ UID, Type, URL string } `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yaml", &ds)
	uids := map[string]bool{}
	for _, d := range ds.Datasources {
		if d.Type != "prometheus" || !strings.HasPrefix(d.URL, "http://127.0.0.1:") {
			t.Errorf("datasource %+v", d)
		}
		uids[d.UID] = true
	}
	var providers struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/rollout-lab.yaml", &providers)
	project := loadCompose(t, composeEnv)
	grafana, _ := project.GetService("grafana")
	mounted := false
	for _, v := range grafana.Volumes {
		if v.Target == providers.Providers[0].Options.Path && strings.HasSuffix(v.Source, "deploy/grafana/dashboards") {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("the provider's path %s is not where the dashboards are mounted", providers.Providers[0].Options.Path)
	}
	// Every dashboard picks its datasource through the variable whose default is a provisioned one.
	data, err := os.ReadFile("grafana/dashboards/rollout-lab-overview.json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"value": "rollout-lab-prometheus"`) || !uids["rollout-lab-prometheus"] {
		t.Error("the dashboards' default datasource is not provisioned")
	}
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// exportedMetricNames are the names every collector of the project declares, histogram and summary series included.
func exportedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	load.NewMetrics(reg)
	lab.NewMetrics(reg)
	experiment.NewAttributedCounter(reg)
	app.NewMetrics(reg)
	descs := make(chan *prometheus.Desc, 1000)
	reg.Describe(descs)
	close(descs)
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("descriptor without a name: %s", d)
		}
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			names[m[1]+suffix] = true
		}
	}
	return names
}

// DashboardVariables are values for every variable the dashboards use.
var dashboardVariables = map[string]string{"plan": "p", "case": ".*", "run": ".*", "datasource": "x",
	"__rate_interval": "4s", "__interval": "1s", "__range": "1h"}

func TestDashboardQueriesParseAndNameExportedMetrics(t *testing.T) {
	all, err := Dashboards()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 {
		t.Fatalf("%d dashboards, want the run overview and the case comparison", len(all))
	}
	exported := exportedMetricNames(t)
	uids := map[string]bool{}
	for _, d := range all {
		if d.UID == "" || uids[d.UID] {
			t.Errorf("%s: uid %q missing or not unique", d.File, d.UID)
		}
		uids[d.UID] = true
		wheres := map[string]bool{}
		for _, q := range d.Queries {
			wheres[strings.SplitN(q.Where, " ", 2)[0]] = true
			expr, err := Expand(q.Expr, dashboardVariables)
			if err != nil {
				t.Errorf("%s, %s: %v", d.File, q.Where, err)
				continue
			}
			parsed, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
			if err != nil {
				t.Errorf("%s, %s: %v", d.File, q.Where, err)
				continue
			}
			parser.Inspect(parsed, func(node parser.Node, _ []parser.Node) error {
				if vs, ok := node.(*parser.VectorSelector); ok && !exported[vs.Name] {
					t.Errorf("%s, %s: %s is not a metric rollout-lab exports", d.File, q.Where, vs.Name)
				}
				return nil
			})
		}
		for _, kind := range []string{"panel", "annotation", "variable"} {
			if !wheres[kind] {
				t.Errorf("%s: no %s query", d.File, kind)
			}
		}
	}
}

func TestExpandRefusesUnknownVariables(t *testing.T) {
	got, err := Expand(`rate(x{plan="$plan",case=~"${case}"}[$__rate_interval])`, map[string]string{"plan": "p", "case": "c", "__rate_interval": "4s"})
	if err != nil || got != `rate(x{plan="p",case=~"c"}[4s])` {
		t.Errorf("got %q, %v", got, err)
	}
	if _, err := Expand(`x{plan="$plna"}`, map[string]string{"plan": "p"}); err == nil || !strings.Contains(err.Error(), "plna") {
		t.Errorf("a typo passed: %v", err)
	}
}

// `docker build .` sends the context to the builder: the lab's keys, results (with their Prometheus token), the
// Grafana password and local credentials stay out.
func TestDockerignoreKeepsSecretsOutOfTheBuildContext(t *testing.T) {
	data, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var patterns []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, strings.TrimSuffix(line, "/"))
		}
	}
	ignored := func(path string) bool {
		for _, p := range patterns {
			for dir := path; dir != "."; dir = filepath.Dir(dir) {
				if ok, _ := filepath.Match(p, dir); ok {
					return true
				}
			}
		}
		return false
	}
	for _, path := range []string{".lab/pki/ca.key", ".lab/kubeconfig", "results/quick/20261130T000000Z/prometheus.token",
		"deploy/grafana/admin-password", ".env", "bin/runner", ".git/config"} {
		if !ignored(path) {
			t.Errorf("%s would be sent to the builder", path)
		}
	}
	for _, path := range []string{"go.mod", "runner/main.go", "charts/cowweb/Chart.yaml"} {
		if ignored(path) {
			t.Errorf("%s, which the build needs, is ignored", path)
		}
	}
}
