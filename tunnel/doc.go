// Package tunnel carries TCP connections over HBONE: HTTP/2 CONNECT inside
// mutual TLS, wire-compatible with Istio's ztunnel. It has the HBONE server and
// pooled client, the outbound, inbound and plaintext proxy loops, and the byte
// copier. Its collaborators (identity, policy, workload lookup, dialing) come in
// through small interfaces it defines.
package tunnel
