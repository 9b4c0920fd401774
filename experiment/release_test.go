package experiment

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	kubefake "helm.sh/helm/v3/pkg/kube/fake"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage"
	"helm.sh/helm/v3/pkg/storage/driver"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sfake "k8s.io/client-go/kubernetes/fake"
)

func memoryHelm(t *testing.T, labels map[string]string) *action.Configuration {
	t.Helper()
	store := storage.Init(driver.NewMemory())
	rel := &release.Release{Name: ReleaseName, Namespace: "ns", Version: 1, Labels: labels,
		Info:  &release.Info{Status: release.StatusDeployed},
		Chart: &chart.Chart{Metadata: &chart.Metadata{Name: "cowweb", Version: "0.1.0", APIVersion: "v2"}}}
	if err := store.Create(rel); err != nil {
		t.Fatal(err)
	}
	return &action.Configuration{Releases: store, KubeClient: &kubefake.PrintingKubeClient{Out: io.Discard}, Log: func(string, ...any) {}}
}

// A release of the same name that the runner did not install is never uninstalled.
func TestOnlyTheRunnersOwnReleaseIsUninstalled(t *testing.T) {
	logger := slog.New(slog.DiscardHandler)
	foreign := memoryHelm(t, nil)
	err := UninstallOwnRelease(foreign, "ns", logger)
	if err == nil || !strings.Contains(err.Error(), "rollout-lab did not install") {
		t.Fatalf("a foreign release: %v", err)
	}
	if _, err := foreign.Releases.Last(ReleaseName); err != nil {
		t.Errorf("the foreign release is gone: %v", err)
	}
	own := memoryHelm(t, map[string]string{InstalledByLabel: InstalledByValue})
	if err := UninstallOwnRelease(own, "ns", logger); err != nil {
		t.Fatal(err)
	}
	if _, err := own.Releases.Last(ReleaseName); err == nil {
		t.Error("the runner's own release stays")
	}
	if err := UninstallOwnRelease(&action.Configuration{Releases: storage.Init(driver.NewMemory())}, "ns", logger); err != nil {
		t.Errorf("no release at all: %v", err)
	}
}

func TestANamespaceTheRunnerCreatesEnforcesRestricted(t *testing.T) {
	ctx := context.Background()
	client := k8sfake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "theirs"}})
	created, err := EnsureNamespace(ctx, client, "mine")
	if err != nil || !created {
		t.Fatalf("created %v, %v", created, err)
	}
	ns, err := client.CoreV1().Namespaces().Get(ctx, "mine", metav1.GetOptions{})
	if err != nil || ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Errorf("the namespace the runner made: %v %v", ns.Labels, err)
	}
	if created, err := EnsureNamespace(ctx, client, "theirs"); err != nil || created {
		t.Errorf("an existing namespace: created %v, %v", created, err)
	}
	if ns, _ := client.CoreV1().Namespaces().Get(ctx, "theirs", metav1.GetOptions{}); len(ns.Labels) != 0 {
		t.Errorf("an existing namespace was relabelled: %v", ns.Labels)
	}
}
