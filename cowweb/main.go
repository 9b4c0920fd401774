// Command cowweb is the sample app of rollout-lab.
package main

import (
	"os"

	"github.com/rollout-lab/rollout-lab/cowweb/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdout, os.Stderr))
}
