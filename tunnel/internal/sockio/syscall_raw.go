//go:build linux && !race && !msan && !asan

package sockio

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	rawCapable = true
	sysRead    = unix.SYS_READ
	sysWrite   = unix.SYS_WRITE
)

// rawCall makes the read or write system call trap on fd and p as a raw
// system call, again when a signal interrupts it.
func rawCall(trap, fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, _, e := unix.RawSyscall(trap, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
		if e == 0 {
			return int(n), 0
		}
		if e != syscall.EINTR {
			return 0, e
		}
	}
}
