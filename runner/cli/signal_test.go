package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

const signalHelperEnv = "ROLLOUT_LAB_SIGNAL_HELPER"

// signalHelper plays a runner whose cleanup takes long: the test binary runs it as a child process.
func signalHelper() {
	ctx, _ := SignalContext(context.Background())
	fmt.Println("ready")
	<-ctx.Done()
	fmt.Println("cleaning up")
	time.Sleep(time.Minute)
	os.Exit(0)
}

// The first Ctrl-C starts the cleanup; a second signal ends the process at once. The second is a SIGTERM: a test
// run in the background inherits SIGINT ignored, and Go restores that disposition when the handler goes.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), signalHelperEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := bufio.NewScanner(out)
	expect := func(want string) {
		t.Helper()
		if !lines.Scan() || lines.Text() != want {
			t.Fatalf("child said %q, want %q", lines.Text(), want)
		}
	}
	expect("ready")
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	expect("cleaning up")
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Fatalf("after the second signal: %v, want death by SIGTERM", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the second signal took %v to end the process", took)
	}
}
