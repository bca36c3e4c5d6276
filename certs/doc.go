// Package certs holds workload identity for Ferry: SPIFFE identities, a local
// certificate authority, and a Store that keeps one rotating certificate per
// service account and hands crypto/tls the hooks to use it. Package
// [github.com/ferrymesh/ferry/certs/istioca] speaks Istio's CA protocol.
//
// # Identities
//
// An [Identity] is spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
// [ParseIdentity] accepts exactly the strings [Identity.String] produces, so
// each identity has one spelling; certificate SANs are held to the same
// canonical form.
//
// # Issuers
//
// An [Issuer] turns a CSR into a chain (leaf first, root last). [LocalCA]
// signs in process with a root, or an intermediate and its chain, loaded
// from PEM files ([LoadLocalCA]; [InitCA] creates a root). The istioca
// client asks istiod or `ferry ca` (the istioca server) over Istio's gRPC
// protocol, as a node agent impersonating the workloads on its node.
//
// # The Store
//
// A [Store] holds an ECDSA P-256 key, generated in process and never
// exported, and a certificate for each local identity ([Store.SetIdentities]).
// [Store.Run] issues them and renews each at about half its lifetime; on
// failure it retries with capped exponential back-off and keeps serving the
// old certificate while it is valid. [Store.Certificate] never returns a
// certificate outside its validity period: it fails closed with
// [ErrNoCertificate].
//
// # TLS
//
// [Store.ServerConfig] and [Store.ClientConfig] return HBONE's TLS
// configurations (TLS 1.3, ALPN h2, mutual authentication, no resumption).
// They read the current certificate at every handshake, so rotation needs no
// restart, and check the peer in VerifyConnection with [VerifyPeer]: the chain
// must verify to the mesh roots, and the leaf must carry exactly one SPIFFE
// ID, in the trust domain (server side) or equal to the expected identity
// (client side).
//
// Package certstest provides an in-memory CA, ready Stores and deliberately
// broken certificates for tests.
package certs
