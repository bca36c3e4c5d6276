package sockio

import (
	"os"
	"syscall"
)

// raw: reads and writes are raw system calls (see the package doc).
var raw = rawCapable && os.Getenv("FERRY_SOCKIO") != "plain"

// Mode reports "raw" or "plain": how sockets are read and written.
func Mode() string {
	if raw {
		return "raw"
	}
	return "plain"
}

// read reads from the non-blocking socket fd.
func read(fd uintptr, p []byte) (int, syscall.Errno) {
	if raw {
		return rawCall(sysRead, fd, p)
	}
	return plainCall(syscall.Read, fd, p)
}

// write writes to the non-blocking socket fd.
func write(fd uintptr, p []byte) (int, syscall.Errno) {
	if raw {
		return rawCall(sysWrite, fd, p)
	}
	return plainCall(syscall.Write, fd, p)
}

// plainRead reads with an ordinary system call, whatever the mode.
func plainRead(fd uintptr, p []byte) (int, syscall.Errno) { return plainCall(syscall.Read, fd, p) }

// plainCall makes call (syscall.Read or syscall.Write) on fd and p, again
// when a signal interrupts it.
func plainCall(call func(int, []byte) (int, error), fd uintptr, p []byte) (int, syscall.Errno) {
	for {
		n, err := call(int(fd), p)
		if err == nil {
			return n, 0
		}
		if e, _ := err.(syscall.Errno); e != syscall.EINTR {
			return 0, e
		}
	}
}
