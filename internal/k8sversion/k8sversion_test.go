package k8sversion

import (
	"os"
	"strings"
	"testing"
)

// The fallback is go.mod's requirement, so every binary names the same release.
func TestVersionIsGoMods(t *testing.T) {
	data, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "\tk8s.io/kubernetes "+required+"\n") {
		t.Errorf("go.mod does not require k8s.io/kubernetes %s", required)
	}
	if v := Version(); v != required {
		t.Errorf("Version() = %s, want %s", v, required)
	}
	if major, minor := MajorMinor("v1.37.2"); major != "1" || minor != "37" {
		t.Errorf("MajorMinor: %s %s", major, minor)
	}
}
