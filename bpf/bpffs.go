//go:build linux

package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ensureBPFFS makes pinDir a directory on a BPF filesystem. If neither
// pinDir nor its parent is on one, it mounts a bpffs (mode 0700) on the
// parent, as the agent must do when the host has not mounted /sys/fs/bpf.
func ensureBPFFS(pinDir string) error {
	if isBPFFS(pinDir) {
		return nil
	}
	parent := filepath.Dir(pinDir)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return fmt.Errorf("bpf: create %s: %w", parent, err)
	}
	if !isBPFFS(parent) {
		if err := unix.Mount("bpffs", parent, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("bpf: mount bpffs on %s: %w", parent, err)
		}
	}
	if err := os.Mkdir(pinDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("bpf: create pin dir: %w", err)
	}
	if !isBPFFS(pinDir) {
		return fmt.Errorf("bpf: %s is not on a BPF filesystem", pinDir)
	}
	return nil
}

func isBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}
