package kubelet

import (
	"net"
	"os"
	"testing"
)

// The kubelet's probes say which release sent them (kube-probe/1.37), as an app's access log shows on a cluster.
func TestProbeUserAgentNamesTheMinorRelease(t *testing.T) {
	for version, want := range map[string]string{"v1.37.2": "kube-probe/1.37", "1.30.0-rc.1": "kube-probe/1.30", "": "kube-probe"} {
		if got := probeUserAgent(version); got != want {
			t.Errorf("probeUserAgent(%q) = %q, want %q", version, got, want)
		}
	}
}

// The node agent sees a listener in the socket table of the process's network namespace, and sees it go.
func TestListeningOnReadsTheSocketTable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	if ok, err := listeningOn(os.Getpid(), map[uint16]bool{port: true}); err != nil || !ok {
		t.Fatalf("listening on %d: %v %v", port, ok, err)
	}
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ln.Close()
	// An established connection on the port is not a listener.
	if ok, err := listeningOn(os.Getpid(), map[uint16]bool{port: true}); err != nil || ok {
		t.Errorf("after close: listening %v %v", ok, err)
	}
}
