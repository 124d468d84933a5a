// Command pause is the sandbox ("pause") container of the test node's pods: containerd's CRI plugin
// starts one per pod to hold its namespaces. It does nothing but wait: it reaps any child re-parented
// to it (it is PID 1 of the pod when the pod shares its PID namespace) and exits 0 on SIGTERM or
// SIGINT, so a pod stops at once instead of waiting out its grace period.
//
// Standard library only, built static (CGO_ENABLED=0) into a FROM-scratch image: no registry is
// needed for the node's sandbox image.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("xqueue-k8s pause")
		return
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reapChildren()
			continue
		}
		os.Exit(0)
	}
}

// reapChildren collects every exited child without blocking. One SIGCHLD can stand for several exits
// (signals coalesce), hence the loop until there is nothing left to reap.
func reapChildren() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
