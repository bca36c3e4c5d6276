package testutil

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
)

// ModuleRoot returns the directory of Ferry's go.mod, found from the
// working directory up (a test runs in its package's directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/ferrymesh/ferry\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("ferry's go.mod not found above the working directory")
		}
		dir = parent
	}
}
