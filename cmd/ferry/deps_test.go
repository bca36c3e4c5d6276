package main

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/cmd/ferry", map[string]string{
		"testing": "no test code in the shipped binary",
		"github.com/ferrymesh/ferry/internal/testutil": "no test helpers in the shipped binary",
		// scripts/image builds the image around the binary; the binary needs
		// neither the image library nor the public root store.
		"github.com/google/go-containerregistry/...": "the image builder's library (scripts/image), not the agent's",
		"golang.org/x/crypto/x509roots/...":          "the image's CA bundle; the agent trusts the mesh and cluster roots only",
	})
}
