// Package testutil holds helpers shared by Ferry's tests: the privileged-test
// gate and the import-direction check. It is imported only from _test.go files.
package testutil
