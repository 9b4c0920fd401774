package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// calibrate refuses what it cannot do before touching a cluster, and says where an unreachable one was looked for.
func TestCalibrateGivesClearErrorsBeforeInstallingAnything(t *testing.T) {
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	unreachable := `apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: me, user: {token: not-a-secret}}]
contexts: [{name: gone, context: {cluster: gone, user: me}}]
`
	if err := os.WriteFile(kubeconfig, []byte(unreachable), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"calibrate", "--yes"}, []string{"no kubeconfig context given"}},
		{[]string{"calibrate", "--context", "gone", "--kubeconfig", kubeconfig}, []string{"no terminal to ask on: pass --yes"}},
		{[]string{"calibrate", "--context", "gone", "--kubeconfig", kubeconfig, "--yes"}, []string{"context gone (https://127.0.0.1:1)", "connection refused"}},
		{[]string{"calibrate", "--context", "elsewhere", "--kubeconfig", kubeconfig, "--yes"}, []string{`no context "elsewhere"`}},
		{[]string{"calibrate", "--context", "gone", "--yes", "--hold", "2s"}, []string{"--hold 2s: want whole seconds between 5s and 5m"}},
		{[]string{"calibrate", "--context", "gone", "--yes", "--lang", "fr"}, []string{`--lang "fr"`}},
		{[]string{"calibrate", "--context", "gone", "--yes", "--load-url", "http://me:not-a-secret@10.0.0.5/say"},
			[]string{`--load-url: load URL "http://me:xxxxx@10.0.0.5/say": want http(s)://host[:port] with no path`}},
		{[]string{"calibrate", "--context", "gone", "--yes", "--load-url", "http://10.0.0.5", "--load-service-type", "NodePort"},
			[]string{"a NodePort load Service takes its nodePort from the URL, which names none"}},
		{[]string{"calibrate", "--context", "gone", "--yes", "--load-service-type", "NodePort"}, []string{"--load-service-type without --load-url"}},
	} {
		code, _, errOut := run(t, c.args...)
		for _, w := range c.want {
			if code != ExitError || !strings.Contains(errOut, w) {
				t.Errorf("%v: exit %d, want an error with %q:\n%s", c.args, code, w, errOut)
			}
		}
		if strings.Contains(errOut, "not-a-secret") {
			t.Errorf("%v: the token is in the output", c.args)
		}
	}
}

// lab up --plan starts the lab a plan's lab section describes, or says why not before starting anything.
func TestLabUpWithAPlanRefusesWhatItCannotPlay(t *testing.T) {
	dir := t.TempDir()
	profile := filepath.Join(dir, "prod.yaml")
	if err := os.WriteFile(profile, []byte("kind: ClusterProfile\nname: prod\nkubeProxy: {mode: iptables, minSyncPeriod: 10s, syncPeriod: 1m, sourc: x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	cluster := filepath.Join(dir, "cluster.yaml")
	for file, text := range map[string]string{
		good:    "name: good\nlab: {nodes: 2}\nload: {rate: 1, duration: 1s}\n",
		bad:     "name: bad\nlab: {nodes: 2, profile: prod.yaml}\nload: {rate: 1, duration: 1s}\n",
		cluster: "name: c\ntarget: {kind: kubernetes, context: x}\nload: {rate: 1, duration: 1s, url: 'http://127.0.0.1:1'}\n",
	} {
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "up", "--dir", dir, "--plan", good, "--nodes", "3"}, "--nodes: with --plan the plan's lab section sets the lab; leave --nodes out"},
		{[]string{"lab", "up", "--dir", dir, "--plan", bad}, profile + `:3:65: kubeProxy.sourc: unknown field "sourc"`},
		{[]string{"lab", "up", "--dir", dir, "--plan", cluster}, "target.kind is kubernetes; lab up starts the lab of a plan with target kind lab"},
	} {
		code, _, errOut := run(t, c.args...)
		if code != ExitError || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, want %q:\n%s", c.args, code, c.want, errOut)
		}
	}
}
