// Package proxymain runs the real kube-proxy (k8s.io/kubernetes/cmd/kube-proxy/app) as the runner's hidden
// subcommand: the lab starts one per node, in the node's network namespace, by re-executing its own binary.
package proxymain

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics, as upstream's main registers them
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric, as upstream's main registers it
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

// DispatchIfAsked runs kube-proxy and exits when the process was started as it (os.Args[1] is Subcommand): the
// runner's main and the lab's test mains call it first.
func DispatchIfAsked() {
	if len(os.Args) > 1 && os.Args[1] == Subcommand {
		os.Exit(Main(os.Args[2:]))
	}
}

// Subcommand is the runner's hidden subcommand that is kube-proxy.
const Subcommand = "kube-proxy"

// Main is kube-proxy's main: args are its flags; the exit code is returned.
func Main(args []string) int {
	command := app.NewProxyCommand()
	command.SetArgs(args)
	return cli.Run(command)
}
