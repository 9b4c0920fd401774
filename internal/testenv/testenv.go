// Package testenv holds what tests of several packages need from the machine they run on.
package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
)

// RequireRootEnv, set to 1 (as .ci/run does), makes a test that needs root fail instead of skipping when it is not:
// CI must not pass on end-to-end tests that never ran.
const RequireRootEnv = "ROLLOUT_LAB_REQUIRE_ROOT"

// RequireRoot skips the test unless it runs as root (the lab's Pod network needs network namespaces and a bridge),
// or fails it when RequireRootEnv is set.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(RequireRootEnv) == "1" {
		t.Fatalf("the lab needs root, and %s=1 forbids skipping", RequireRootEnv)
	}
	t.Skip("the lab's Pod network needs root")
}

// BuildCowweb builds the project's cowweb into dir and returns its path: tests run it as a Pod's app.
func BuildCowweb(dir string) (string, error) {
	path := filepath.Join(dir, "cowweb")
	if out, err := exec.Command("go", "build", "-o", path, "github.com/rollout-lab/rollout-lab/cowweb").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build cowweb: %v\n%s", err, out)
	}
	return path, nil
}

// MainWithCowweb runs a package's tests with cowweb built into a temporary directory, its path in *binary.
func MainWithCowweb(m *testing.M, binary *string) int {
	dir, err := os.MkdirTemp("", "cowweb-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *binary, err = BuildCowweb(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// Eventually polls cond until it holds, failing the test with what after timeout.
func Eventually(t testing.TB, what string, timeout time.Duration, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(context.Background(), 100*time.Millisecond, timeout, true, cond); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// RequireBrowserEnv, set (as .ci/run does), makes a test that needs Chromium fail instead of skipping without it.
const RequireBrowserEnv = "ROLLOUT_LAB_REQUIRE_BROWSER" // also read by runner/cli's end-to-end check of report.html

// Chromium is the path of Debian's chromium for tests that look at a page as a reader does; it skips the test
// without one, or fails it when RequireBrowserEnv is set.
func Chromium(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err == nil {
		return path
	}
	if os.Getenv(RequireBrowserEnv) != "" {
		t.Fatalf("chromium (Debian package chromium) is needed: %v", err)
	}
	t.Skip("no chromium on this machine (Debian package chromium)")
	return ""
}
