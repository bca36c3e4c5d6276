// Command podapp is the test workload of Ferry's netns testbed: an HTTP server
// that reports the client address it saw, and a client that prints a status
// code and body, playing the httpbin and curl pods of Istio's samples.
//
// Usage:
//
//	podapp serve [--addr :8000] [--name NS/POD]
//	podapp get URL [--timeout 5s] [--expect-code 200] [--data N] [--gate ADDR]
//	podapp hold URL [--interval 250ms] [--gate ADDR]
//
// The server answers:
//
//	/ip         the client IP it saw, one line (the address of the TCP peer)
//	/ip?from=A  the same, with status 403 unless that IP is A (a readiness
//	            probe that passes only when the kubelet's probes come from A)
//	/addr       the client IP:port it saw
//	/           "hostname=H pod=NS/POD"
//	/bytes?n=N  N bytes (at most 1 GiB)
//	/echo       the request body (POST)
//
// get prints the status code on the first line and the body after it. When
// the request fails before a response it prints 000 (as curl does) and the
// error on stderr. It exits 0 when the code equals --expect-code (default:
// any 2xx), 1 otherwise. With --gate it first waits for one connection to
// ADDR (a test opens it once the pod's capture is in place).
//
// hold keeps one connection and sends a GET on it every interval, printing
// "TIME STATUS BODY" per response, until SIGTERM (exit 0) or the connection
// fails (exit 1): the long-lived connection of the rolling-update tests.
package main
