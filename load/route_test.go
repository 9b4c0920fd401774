package load

import (
	"syscall"
	"testing"
)

// A route travels as text (in a response header, in a classified error's tag) and reads back whole.
func TestRouteTravelsAsText(t *testing.T) {
	for _, r := range []Route{{Endpoint: "198.18.0.7:8080"}, {Endpoint: "198.18.0.7:8080", Pod: "uid-1"},
		{Endpoint: "198.18.0.7:8080", Pod: "uid-1", Node: "lab-node-2"}, {Endpoint: "198.18.0.7:8080", Node: "lab-node-1"}} {
		if back := ParseRoute(r.String()); back != r {
			t.Errorf("%+v → %q → %+v", r, r.String(), back)
		}
		err := &classifiedError{class: ClassReset, route: r, err: syscall.ECONNRESET}
		if got := RouteOf(err.Error(), nil); got != r {
			t.Errorf("through an error's tag %q: %+v, want %+v", err.Error(), got, r)
		}
	}
}
