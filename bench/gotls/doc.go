// Package gotls is a minimal plain Go mutual-TLS tunnel pair: Ferry's
// in-house performance baseline ("go-tls" in the benchmark suite).
//
// A [Client] accepts plaintext TCP connections and carries each one over its
// own TLS 1.3 connection to a [Server], which forwards the bytes to a fixed
// target. There is no multiplexing, no policy and no identity beyond the
// certificate check: it is the cheapest honest way to get mTLS between two
// nodes in Go, so the agent's figures are judged against it.
package gotls
