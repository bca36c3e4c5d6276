// Package certs holds workload identity for Ferry: SPIFFE identities, a local
// certificate authority, the Istio CA protocol, and a Store that keeps one
// rotating certificate per service account and hands crypto/tls the hooks to
// use it.
package certs
