package main

import (
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

func TestDeps(t *testing.T) {
	testutil.CheckDeps(t, "github.com/ferrymesh/ferry/cmd/ferry", map[string]string{
		"testing": "no test code in the shipped binary",
		"github.com/ferrymesh/ferry/internal/testutil": "no test helpers in the shipped binary",
	})
}
