// Package adversarial is Ferry's reliability and security suite: hostile
// peers, forged inputs, resource exhaustion, slow clients, faults and a
// bounded soak, each asserting an outcome against a fixed budget.
//
// Unprivileged tests run a real `ferry agent --redirect none` process on
// loopback (127.0.10.0/24 plays node a's pods, 127.0.20.0/24 node b's) and
// attack its HBONE port with certificates minted by certs/certstest and a
// hand-driven HTTP/2 peer (x/net/http2 Framer and hpack). Budgets are read
// from the agent's own Prometheus endpoint (go_goroutines,
// go_memstats_heap_inuse_bytes, process_open_fds), so the test process never
// counts against them; when an agent does not return to its baseline the
// test logs its /debug/pprof/goroutine?debug=1 profile.
//
// What each test covers:
//
//	identity    TestHandshakeRefusesHostileClientCerts, TestClientRefusesImpostorServer,
//	            TestClientRefusesForgedServerCerts
//	spoofing    TestSpoofedSourceIPHasNoIdentity, TestForgedHeadersChangeNothing
//	abuse       TestTunnelAbuse
//	HTTP/2      TestHTTP2RapidReset, TestHTTP2HeaderFloods, TestHTTP2StreamLimit,
//	            TestHTTP2PeerNeverReads, TestHTTP2ControlFrameFlood, TestHTTP2FlowControlViolation,
//	            TestHandshakeFlood
//	slowloris   TestSlowloris, TestSlowPeerServer
//	faults      TestAgentKilledMidStream, TestInventorySourceGone, TestDestinationGoneMidStream,
//	            TestCAUnavailable
//	soak        TestSoak (75 s; FERRY_SOAK=10m for longer, 10 s with -short)
//	fuzz        FuzzHBONERequest (make fuzz)
//	testbed     TestPrivilegedAdversarialTestbed: attacks through eBPF capture on two
//	            nodes (15008 identities, CONNECT abuse, HTTP/2 abuse, outbound source-IP
//	            spoofing, plaintext under a principal policy), the admin endpoint from
//	            pods, bounded churn, SIGKILL under traffic and the kernel objects
//	            before, during and after
//
// TestPrivileged* tests run on the netns testbed (internal/testbed) and need
// root and PRIVILEGED_TESTS=1.
//
//	go test ./e2e/adversarial                          # loopback suite (~2.5 min)
//	PRIVILEGED_TESTS=1 go test ./e2e/adversarial       # plus the testbed (~20 s more)
//	FERRY_SOAK=10m go test -run Soak ./e2e/adversarial # a longer soak
//
// FERRY_BIN names a prebuilt ferry binary; otherwise the first test that
// needs one builds ./cmd/ferry.
package adversarial
