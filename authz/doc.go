// Package authz is Ferry's L4 authorization engine: it compiles Istio
// AuthorizationPolicy and PeerAuthentication objects into an Engine whose
// Decide method answers whether one connection is allowed, by which policy and
// why.
//
// The package is pure: standard library only, no I/O, no logging, no clock.
package authz
