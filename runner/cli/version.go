package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Version is stamped at build time with -ldflags "-X github.com/rollout-lab/rollout-lab/runner/cli.Version=...".
var Version = "dev"

// BuildInfo is what `runner version` reports and results record as provenance.
type BuildInfo struct {
	Version   string            `json:"version"`
	GoVersion string            `json:"goVersion"`
	Platform  string            `json:"platform"`
	Libraries map[string]string `json:"libraries"`
}

// tracked are the libraries whose versions decide what an experiment measured.
var tracked = []string{"k8s.io/client-go", "k8s.io/kubernetes", "helm.sh/helm/v3", "github.com/tsenart/vegeta/v12",
	"github.com/prometheus/client_golang", "github.com/prometheus/prometheus"}

// ReadBuildInfo describes this binary.
func ReadBuildInfo() BuildInfo {
	info := BuildInfo{Version: Version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH, Libraries: map[string]string{}}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Replace != nil {
				dep = dep.Replace
			}
			for _, path := range tracked {
				if dep.Path == path {
					info.Libraries[path] = dep.Version
				}
			}
		}
	}
	return info
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the runner's version and the versions of the libraries it was built with",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := ReadBuildInfo()
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "rollout-lab runner %s (%s, %s)\n", info.Version, info.GoVersion, info.Platform)
			for _, path := range tracked {
				if v, ok := info.Libraries[path]; ok {
					fmt.Fprintf(out, "  %s %s\n", path, v)
				}
			}
			return nil
		},
	}
}
