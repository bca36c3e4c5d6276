// Package netns runs code inside a Linux network namespace without ever
// moving a thread that the Go scheduler may hand to other goroutines.
//
// Do runs a function on a fresh OS thread that joins the namespace and is
// discarded afterwards; sockets made inside keep their namespace and may be
// used from any goroutine. Tests, the testbed and ferrybench all switch
// namespaces through this package and nowhere else.
package netns
