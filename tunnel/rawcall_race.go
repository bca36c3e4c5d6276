//go:build linux && (race || msan || asan)

package tunnel

import "syscall"

// rawRead reads through the syscall package in race, msan and asan builds:
// its annotations order a socket's writer before its reader, which raw
// system calls would hide from the detectors.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) { return plainRead(fd, p) }

// rawWrite writes through the syscall package (see rawRead).
func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) { return plainCall(syscall.Write, fd, p) }
