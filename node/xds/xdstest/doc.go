// Package xdstest reads a test istiod (internal/kubetest) the way a node
// agent does, for tests of what istiod sends.
package xdstest
