package plan

import (
	"fmt"
	"strings"
)

// LoadFlag is a command-line flag of `runner attack` and the load key it sets.
type LoadFlag struct{ Flag, Key string }

// LoadFlags are the flags a load can be given by on the command line, in the order a plan writes their keys: the
// one list both the command and FromLoadFlags read.
var LoadFlags = []LoadFlag{
	{"timeout", "timeout"}, {"connection", "connection"}, {"think-time", "thinkTime"},
	{"connections", "connections"}, {"workers", "workers"}, {"max-workers", "maxWorkers"},
	{"start-rate", "startRate"}, {"rate", "rate"}, {"duration", "duration"}, {"stages", "stages"},
}

// FromLoadFlags builds a plan named name whose load is given by flags (load key → the flag's text), through the plan
// format so it gets the same defaults and validation; stages are DURATION:TARGET,… as --stages takes them.
func FromLoadFlags(name string, flags map[string]string) (*Plan, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nrollout: {restart: false}\nload:\n", name)
	for _, f := range LoadFlags {
		v, ok := flags[f.Key]
		switch {
		case !ok:
		case f.Key == "stages":
			b.WriteString("  stages:\n")
			for _, stage := range strings.Split(v, ",") {
				duration, target, found := strings.Cut(strings.TrimSpace(stage), ":")
				if !found {
					return nil, fmt.Errorf("--stages: %q is not DURATION:TARGET (e.g. 60s:200)", stage)
				}
				fmt.Fprintf(&b, "    - {duration: %s, target: %s}\n", duration, target)
			}
		default:
			fmt.Fprintf(&b, "  %s: %s\n", f.Key, v)
		}
	}
	return Parse("command line", []byte(b.String()))
}
