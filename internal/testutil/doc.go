// Package testutil holds helpers shared by Ferry's tests: the privileged-test
// gate, network namespaces, the descriptor-leak and import-direction checks,
// and the data-plane keepalive check. It is imported only from _test.go files.
package testutil
