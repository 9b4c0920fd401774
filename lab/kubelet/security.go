package kubelet

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/rollout-lab/rollout-lab/internal/fileutil"
	corev1 "k8s.io/api/core/v1"
)

// The lab runs every container process, probe and hook as the user its securityContext names, through util-linux's
// setpriv after `ip netns exec` entered the Pod's namespace (which needs root). What it honours, as the kubelet
// and a container runtime do: runAsUser, runAsGroup, supplementalGroups and fsGroup (as supplementary groups),
// runAsNonRoot (a container that would run as root does not start), capabilities (the runtime's default set for
// root, add and drop), and a private home and working directory per Pod. What it cannot: the process sees the
// host's filesystem (readOnlyRootFilesystem, volumes, seccomp and AppArmor profiles are not applied), and root in
// a Pod is root on the host minus the capabilities it dropped. So the lab always sets no_new_privs
// (allowPrivilegeEscalation: false) — setuid programs of the host must not give a Pod's user root — whatever the
// spec says.

// defaultCapabilities is the set containerd and CRI-O give a container's root user (the runtime default).
var defaultCapabilities = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// identity is who a container's processes run as.
type identity struct {
	uid, gid int64
	groups   []int64
	caps     []string // effective for root, ambient for another user
}

// containerIdentity resolves the Pod's and the container's securityContext as the kubelet does (the container's
// fields win); an error is what the kubelet reports as CreateContainerConfigError.
func containerIdentity(pod *corev1.Pod, c corev1.Container) (identity, error) {
	var id identity
	var nonRoot *bool
	if psc := pod.Spec.SecurityContext; psc != nil {
		if psc.RunAsUser != nil {
			id.uid = *psc.RunAsUser
		}
		if psc.RunAsGroup != nil {
			id.gid = *psc.RunAsGroup
		}
		nonRoot = psc.RunAsNonRoot
		id.groups = append(id.groups, psc.SupplementalGroups...)
		if psc.FSGroup != nil {
			id.groups = append(id.groups, *psc.FSGroup)
		}
	}
	caps := slices.Clone(defaultCapabilities)
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			id.uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			id.gid = *sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = sc.RunAsNonRoot
		}
		if sc.Privileged != nil && *sc.Privileged {
			return id, fmt.Errorf("container %s asks to be privileged: the lab runs Pods on the host and does not allow it", c.Name)
		}
		if sc.Capabilities != nil {
			for _, d := range sc.Capabilities.Drop {
				if strings.EqualFold(string(d), "ALL") {
					caps = nil
					break
				}
				caps = slices.DeleteFunc(caps, func(c string) bool { return strings.EqualFold(c, capName(d)) })
			}
			for _, a := range sc.Capabilities.Add {
				if name := capName(a); !slices.Contains(caps, name) {
					caps = append(caps, name)
				}
			}
		}
	}
	if id.uid < 0 || id.gid < 0 {
		return id, fmt.Errorf("container %s: negative user or group id", c.Name)
	}
	if nonRoot != nil && *nonRoot && id.uid == 0 {
		// The kubelet's own words for it.
		return id, fmt.Errorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", pod.Namespace+"/"+pod.Name, c.Name)
	}
	if id.uid != 0 {
		// A non-root user gets only what the spec adds, as ambient capabilities (what runtimes do for non-root).
		var added []string
		if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil {
			for _, a := range sc.Capabilities.Add {
				added = append(added, capName(a))
			}
		}
		caps = added
	}
	id.caps = caps
	slices.Sort(id.groups)
	id.groups = slices.Compact(id.groups)
	return id, nil
}

func capName(c corev1.Capability) string {
	return strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_")
}

// wrap prefixes argv with the setpriv call that becomes the identity, keeps the parent-death signal across the
// user change (it is cleared on a credential change), and forbids gaining privileges.
func (id identity) wrap(setpriv string, argv []string) []string {
	capList := "-all"
	for _, c := range id.caps {
		capList += ",+" + strings.ToLower(c)
	}
	groups := "--clear-groups"
	if len(id.groups) > 0 {
		ids := make([]string, len(id.groups))
		for i, g := range id.groups {
			ids[i] = strconv.FormatInt(g, 10)
		}
		groups = "--groups=" + strings.Join(ids, ",")
	}
	out := []string{setpriv, "--reuid=" + strconv.FormatInt(id.uid, 10), "--regid=" + strconv.FormatInt(id.gid, 10), groups,
		"--no-new-privs", "--pdeathsig=keep", "--bounding-set=" + capList}
	if id.uid != 0 && len(id.caps) > 0 {
		out = append(out, "--inh-caps="+capList, "--ambient-caps="+capList)
	}
	return append(append(out, "--"), argv...)
}

// podFiles gives each Pod a private home and working directory, owned by its user, outside the lab's state
// directory (which is root's alone), and stages executables the Pod's user could not reach where it can, as a
// runtime unpacks an image.
type podFiles struct {
	root   string // 0711: Pods' users can reach their own directory, not list the others
	mu     sync.Mutex
	staged map[string]string // source path|size|mtime → staged path
}

func newPodFiles() (*podFiles, error) {
	root, err := os.MkdirTemp("", "rollout-lab-pods-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(root, 0o711); err != nil {
		return nil, err
	}
	for _, dir := range []string{"home", "images"} {
		if err := os.Mkdir(filepath.Join(root, dir), 0o711); err != nil {
			return nil, err
		}
	}
	return &podFiles{root: root, staged: map[string]string{}}, nil
}

// home makes the Pod's private directory for a user.
func (f *podFiles) home(pod *corev1.Pod, id identity) (string, error) {
	dir := filepath.Join(f.root, "home", string(pod.UID))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, os.Chown(dir, int(id.uid), int(id.gid))
}

func (f *podFiles) removeHome(pod *corev1.Pod) error {
	return os.RemoveAll(filepath.Join(f.root, "home", string(pod.UID)))
}

func (f *podFiles) Close() error { return os.RemoveAll(f.root) }

// reachable says whether any user can execute path: every directory on the way searchable by others and the
// file executable and readable by others (scripts are read by their interpreter).
func reachable(path string) bool {
	info, err := os.Stat(path)
	if err != nil || info.Mode().Perm()&0o005 != 0o005 {
		return false
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		info, err := os.Stat(dir)
		if err != nil || info.Mode().Perm()&0o001 == 0 {
			return false
		}
		if dir == "/" || dir == "." {
			return true
		}
	}
}

// executable returns a path to argv0 that a user other than root can run: argv0 itself when it can, otherwise
// a staged copy (a hard link when on the same filesystem).
func (f *podFiles) executable(argv0 string) (string, error) {
	path := argv0
	if !strings.Contains(path, "/") {
		found, err := exec.LookPath(path)
		if err != nil {
			return "", err
		}
		path = found
	}
	if reachable(path) {
		return argv0, nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s|%d|%d", abs, info.Size(), info.ModTime().UnixNano())
	f.mu.Lock()
	defer f.mu.Unlock()
	if staged, ok := f.staged[key]; ok {
		return staged, nil
	}
	sum := sha256.Sum256([]byte(key))
	dir := filepath.Join(f.root, "images", hex.EncodeToString(sum[:8]))
	if err := os.Mkdir(dir, 0o711); err != nil && !os.IsExist(err) {
		return "", err
	}
	staged := filepath.Join(dir, filepath.Base(abs))
	if err := os.Link(abs, staged); err != nil || info.Mode().Perm()&0o005 != 0o005 {
		os.Remove(staged)
		if err := fileutil.CopyNew(abs, staged, 0o755); err != nil {
			return "", fmt.Errorf("stage %s for the Pod's user: %w", abs, err)
		}
	}
	f.staged[key] = staged
	return staged, nil
}

// podProcAttr puts a Pod's process in its own process group and kills it when the agent's process dies, so a hard
// exit of the runner leaves no Pod process behind.
func podProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
