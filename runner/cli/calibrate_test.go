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
