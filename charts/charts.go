// Package charts carries the project's Helm charts inside the binary, so the runner installs them from anywhere.
package charts

import (
	"embed"
	"fmt"
	"io/fs"
	"path"

	"github.com/rollout-lab/rollout-lab/internal/k8sversion"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
)

//go:embed all:cowweb
var files embed.FS

// CowwebName is the directory and chart name of the sample app's chart.
const CowwebName = "cowweb"

// Cowweb loads the embedded cowweb chart.
func Cowweb() (*chart.Chart, error) { return load(CowwebName) }

func load(name string) (*chart.Chart, error) {
	var buffered []*loader.BufferedFile
	err := fs.WalkDir(files, name, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		rel := p[len(name)+1:]
		buffered = append(buffered, &loader.BufferedFile{Name: path.Clean(rel), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded chart %s: %w", name, err)
	}
	c, err := loader.LoadFiles(buffered)
	if err != nil {
		return nil, fmt.Errorf("load embedded chart %s: %w", name, err)
	}
	return c, nil
}

// Render renders a chart as `helm template` does, values validated against its schema, without any cluster.
func Render(c *chart.Chart, releaseName, namespace string, values map[string]any) (string, error) {
	install := action.NewInstall(&action.Configuration{})
	install.DryRun = true
	install.ClientOnly = true
	install.Replace = true
	install.ReleaseName = releaseName
	install.Namespace = namespace
	kubeVersion := k8sversion.Version()
	major, minor := k8sversion.MajorMinor(kubeVersion)
	install.KubeVersion = &chartutil.KubeVersion{Version: kubeVersion, Major: major, Minor: minor}
	rel, err := install.Run(c, values)
	if err != nil {
		return "", fmt.Errorf("render chart %s: %w", c.Name(), err)
	}
	return rel.Manifest, nil
}
