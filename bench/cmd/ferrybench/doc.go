// Command ferrybench runs Ferry's performance benchmark suite (issue 8) and
// writes bench/results.json and a table.
//
// It brings up internal/testbed's direct layout: two "nodes", network
// namespaces joined by a veth pair, node a holding the client pod's address
// on its lo and node b the server pod's (after a killed run,
// `scripts/testbed down --all` removes what is left). It runs every tunnel
// pair (the peers) as two separate processes, one per node: Ferry's agents
// (--redirect none), the in-repo go-tls pair, ghostunnel, HAProxy, nginx
// stream, stunnel and Istio's pkg/hbone when they are installed, plus direct
// TCP. This process is the load generator (its client sockets live in node
// a, bound to the client pod's address) and the sink (its listeners live in
// node b at the server pod's address). Capture is policy routing: in node a
// the server pod's address is also local, and a rule sends TCP to its ports
// 20001-20099 to the local table, where each peer's client side listens;
// everything else to it (the peers' server sides, direct TCP on port 20000)
// crosses the veth. Every peer is run in each round, round-robin, and every
// figure is reported as min/median/max over rounds; the headline figures are
// ratios taken within a round.
//
// The capture section (-benchmarks capture; capture.go) compares Ferry's
// agents with --capture pod and --capture node on two more testbeds of the
// default layout, where pods are network namespaces of their own.
//
// Peer processes' CPU is utime+stime of their process trees from /proc, RSS
// is VmRSS, and the agents' Go heap is HeapAlloc after a forced GC from the
// admin endpoint's /debug/pprof/heap?debug=1&gc=1. Idle connections (2000
// and 10000 by default) are held by a child process in node a, so that this
// process's descriptors suffice for the sink's side.
//
// Usage (as root; scripts/bench installs the peers and calls it):
//
//	ferrybench [-rounds 3] [-duration 3s] [-smoke] [-out bench/results.json] [-ferry bin/ferry] ...
//	ferrybench gotls client|server -listen ADDR -target ADDR -cert F -key F -ca F
//	ferrybench hold -n N -dst ADDR   (inside node a: hold N idle connections)
//	ferrybench active -n N -size S -dst ADDR   (inside node a: N connections, one request per second each)
//	ferrybench tlsserver -listen ADDR -cert F -key F -ca F   (the handshake benchmark's plain Go TLS server)
//	ferrybench split PROFILE...   (a -profile CPU profile split: kernel, runtime, crypto, own code, other)
package main
