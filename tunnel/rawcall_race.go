//go:build linux && race

package tunnel

import "syscall"

// rawRead reads from the non-blocking socket fd through the syscall
// package, whose race annotations order the socket's writer before its
// reader; raw system calls would hide that from the detector.
func rawRead(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err == nil {
			return n, 0
		}
		if e, _ := err.(syscall.Errno); e != syscall.EINTR {
			return 0, e
		}
	}
}

// rawWrite writes to the non-blocking socket fd through the syscall
// package (see rawRead).
func rawWrite(fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, err := syscall.Write(int(fd), p)
		if err == nil {
			return n, 0
		}
		if e, _ := err.(syscall.Errno); e != syscall.EINTR {
			return 0, e
		}
	}
}
