package kubelet

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollout-lab/rollout-lab/internal/testenv"
	"github.com/rollout-lab/rollout-lab/lab/cni"
)

const podParentHelperEnv = "ROLLOUT_LAB_POD_PARENT_HELPER"

// runPodParentHelper plays a runner that starts a Pod process the way the node agent does (Pod network, setpriv
// as uid 65532, the Pod's process attributes), prints its PID and waits to be killed.
func runPodParentHelper() int {
	n, err := cni.NewNetnsNetwork()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	clusterIP, _, _ := strings.Cut(n.ClusterCIDR(), "/")
	if _, err := n.AddNode("n1", clusterIP+"/24"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := n.Setup("ns/orphan", "n1"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd, err := n.Command("ns/orphan", identity{uid: 65532, gid: 65532}.wrap(setpriv, []string{"sleep", "300"}))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd.SysProcAttr = podProcAttr()
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(cmd.Process.Pid)
	time.Sleep(time.Minute)
	return 0
}

// A runner that dies hard (SIGKILL, a crash) leaves no Pod process behind: each has a parent-death signal, kept
// across setpriv's change of user.
func TestPodProcessesDieWithTheRunner(t *testing.T) {
	testenv.RequireRoot(t)
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), podParentHelperEnv+"=1")
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		helper.Process.Kill()
		t.Fatalf("helper: %v", err)
	}
	pod, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec, then setpriv, then sleep: the same process, its user changed by setpriv.
	var status []byte
	for start := time.Now(); time.Since(start) < 5*time.Second; time.Sleep(20 * time.Millisecond) {
		if status, err = os.ReadFile(fmt.Sprintf("/proc/%d/status", pod)); err != nil || strings.Contains(string(status), "Uid:\t65532") {
			break
		}
	}
	if err != nil || !strings.Contains(string(status), "Uid:\t65532") || !strings.Contains(string(status), "Name:\tsleep") {
		t.Errorf("the Pod process: %v\n%s", err, status)
	}
	helper.Process.Kill()
	helper.Wait()
	defer func() { _, _ = cni.CleanStale() }() // the helper's namespace, now of a dead lab
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pod, 0) == nil {
		if state, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pod)); strings.Contains(string(state), ") Z ") {
			break // killed, waiting for init to reap it
		}
		if time.Now().After(deadline) {
			syscall.Kill(pod, syscall.SIGKILL)
			t.Fatal("the Pod process outlived the runner that started it")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(podParentHelperEnv) != "" {
		os.Exit(runPodParentHelper())
	}
	os.Exit(m.Run())
}
