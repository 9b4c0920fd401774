package kubelet

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestContainerIdentityFollowsTheSecurityContext(t *testing.T) {
	pod := func(psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) (*corev1.Pod, corev1.Container) {
		c := corev1.Container{Name: "app", SecurityContext: sc}
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"}, Spec: corev1.PodSpec{SecurityContext: psc, Containers: []corev1.Container{c}}}, c
	}
	cases := []struct {
		name    string
		psc     *corev1.PodSecurityContext
		sc      *corev1.SecurityContext
		want    identity
		wantErr string
	}{
		{name: "no context: root with the runtime's default capabilities", want: identity{caps: defaultCapabilities}},
		{name: "the chart's: 65532, nothing added", psc: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](65532), RunAsGroup: ptr.To[int64](65532)},
			sc:   &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			want: identity{uid: 65532, gid: 65532}},
		{name: "container wins over Pod, groups merged", psc: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000), SupplementalGroups: []int64{5, 3}, FSGroup: ptr.To[int64](3)},
			sc:   &corev1.SecurityContext{RunAsUser: ptr.To[int64](2000), Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"CAP_NET_BIND_SERVICE"}}},
			want: identity{uid: 2000, groups: []int64{3, 5}, caps: []string{"NET_BIND_SERVICE"}}},
		{name: "root dropping some", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW", "dac_override"}}},
			want: identity{caps: slices.DeleteFunc(slices.Clone(defaultCapabilities), func(c string) bool { return c == "NET_RAW" || c == "DAC_OVERRIDE" })}},
		{name: "runAsNonRoot without a user", psc: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)}, wantErr: "container has runAsNonRoot and image will run as root"},
		{name: "runAsNonRoot with user 0", sc: &corev1.SecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](0)}, wantErr: "runAsNonRoot"},
		{name: "privileged", sc: &corev1.SecurityContext{Privileged: ptr.To(true)}, wantErr: "privileged"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, c := pod(tc.psc, tc.sc)
			got, err := containerIdentity(p, c)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.uid != tc.want.uid || got.gid != tc.want.gid || !slices.Equal(got.groups, tc.want.groups) || !slices.Equal(got.caps, tc.want.caps) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestWrapBecomesTheUserWithoutNewPrivileges(t *testing.T) {
	argv := identity{uid: 65532, gid: 65532}.wrap("/usr/bin/setpriv", []string{"/bin/app", "--flag"})
	want := []string{"/usr/bin/setpriv", "--reuid=65532", "--regid=65532", "--clear-groups", "--no-new-privs", "--pdeathsig=keep", "--bounding-set=-all", "--", "/bin/app", "--flag"}
	if !slices.Equal(argv, want) {
		t.Errorf("got %q\nwant %q", argv, want)
	}
	argv = identity{uid: 1000, gid: 1000, groups: []int64{4}, caps: []string{"NET_BIND_SERVICE"}}.wrap("setpriv", []string{"app"})
	for _, flag := range []string{"--groups=4", "--bounding-set=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service"} {
		if !slices.Contains(argv, flag) {
			t.Errorf("%q lacks %s", argv, flag)
		}
	}
}

// An executable in a directory only root can enter is staged where the Pod's user reaches it.
func TestExecutablesOutOfTheUsersReachAreStaged(t *testing.T) {
	files, err := newPodFiles()
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	private := t.TempDir() // 0700
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(private, "app")
	if err := os.WriteFile(app, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	staged, err := files.executable(app)
	if err != nil {
		t.Fatal(err)
	}
	if staged == app || !reachable(staged) || !strings.HasPrefix(staged, files.root) {
		t.Errorf("staged %s (reachable %v)", staged, reachable(staged))
	}
	again, err := files.executable(app)
	if err != nil || again != staged {
		t.Errorf("second stage: %s %v, want the same copy", again, err)
	}
	if got, err := files.executable("sh"); err != nil || got != "sh" {
		t.Errorf("a program on PATH anyone can run: %s %v", got, err)
	}
}
