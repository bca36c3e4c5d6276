// Command pause is the sandbox ("pause") image of the test node of
// internal/kubenode: it holds a pod's namespaces by sleeping until it is
// told to stop (SIGTERM or SIGINT).
package main
