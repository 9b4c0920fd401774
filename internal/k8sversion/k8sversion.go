// Package k8sversion says which Kubernetes release the project builds against: the lab's components are that
// release, and charts are rendered for it.
package k8sversion

import (
	"runtime/debug"
	"strings"

	"k8s.io/component-base/version"
)

// required is go.mod's k8s.io/kubernetes requirement, for binaries that neither link it nor are stamped (a test
// of a package that does not use the lab); TestVersionIsGoMods holds it to go.mod.
const required = "v1.37.2"

// Version is k8s.io/kubernetes's version in the module build info; else the version stamped into component-base
// (the Makefile's K8S_LDFLAGS); else go.mod's requirement.
func Version() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "k8s.io/kubernetes" {
				if dep.Replace != nil {
					return dep.Replace.Version
				}
				return dep.Version
			}
		}
	}
	if stamped := version.Get().GitVersion; strings.HasPrefix(stamped, "v1.") {
		return stamped
	}
	return required
}

// MajorMinor splits a version such as v1.37.2 into "1" and "37".
func MajorMinor(v string) (major, minor string) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return "", ""
	}
	return parts[0], parts[1]
}
