// Command pause is the sandbox ("pause") image of the test node of
// internal/kubenode: it holds a pod's namespaces by sleeping until it is
// told to stop (SIGTERM or SIGINT).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
