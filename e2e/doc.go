// Package e2e holds Ferry's end-to-end tests. Each test brings up its own netns
// testbed with internal/testbed (a fabric bridge, node and pod network
// namespaces, one ferry agent per node, podapp servers in the pods), drives
// traffic between pods, checks what the agents report and what crossed the
// fabric, and tears the testbed down in t.Cleanup.
//
// Every test is a TestPrivileged* test: it needs root and runs only with
// PRIVILEGED_TESTS=1 (make test-privileged). The pod-to-pod benchmark,
// BenchmarkPrivilegedPodToPod, compares mesh and no-mesh paths on one testbed:
//
//	PRIVILEGED_TESTS=1 go test -run '^$' -bench PodToPod -benchtime 3s ./e2e
package e2e
