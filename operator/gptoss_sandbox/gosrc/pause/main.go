// Command pause is the real node's pod sandbox process: it holds a pod's
// namespaces open, reaps the zombies re-parented to it (it is the pod's PID 1
// when the pod shares its process namespace) and exits on SIGINT or SIGTERM.
// No registry is reachable here, so the node runs this instead of pulling
// registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
