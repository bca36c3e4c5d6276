//go:build !linux || race || msan || asan

package sockio

import "syscall"

// Raw calls would hide from the race, msan and asan detectors that a
// socket's writer happens before its reader; elsewhere they are not wired up.
const (
	rawCapable = false
	sysRead    = 0
	sysWrite   = 0
)

func rawCall(_, _ uintptr, _ []byte) (int, syscall.Errno) {
	panic("sockio: raw system calls are off in this build")
}
