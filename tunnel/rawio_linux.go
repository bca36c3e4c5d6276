package tunnel

import (
	"io"
	"net"
	"os"
	"syscall"
)

// The data plane reads and writes its sockets with raw system calls. The
// sockets are non-blocking, so the calls return at once and need none of
// the runtime's system-call bookkeeping; and that bookkeeping is costly
// here: the first ordinary system call after the process went idle wakes
// the runtime's monitor thread (sysmon) from its deep sleep, which then
// polls every 20 µs until the process is idle again. On a request/response
// load that is a futex wake, a futex sleep and a few nanosleeps per
// request, more than the reads and writes themselves (measured: both
// agents' CPU per 1 KiB request 153–170 → 97–100 µs). Of the reads a loop
// makes without waiting for data, every sysmonEvery-th is an ordinary call,
// so that sysmon is awake through a busy spell that never yields; counting
// every read instead woke it on request/response loads too (rr1k agent CPU
// 95–100 → 87–93 µs per request).
// Race-detector builds use the syscall package's calls throughout
// (rawcall_race.go), whose annotations tell the detector that socket I/O
// orders the goroutines on either end.

// rawSocket is a TCP connection whose Read and Write use raw system calls;
// everything else is the TCPConn's. It is used by one reader and one
// writer at a time, as crypto/tls uses the connection under it.
type rawSocket struct {
	*net.TCPConn
	rc   syscall.RawConn
	busy busyReads
}

// newRawSocket wraps c when it is a TCP connection and returns c as it is
// otherwise.
func newRawSocket(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawSocket{TCPConn: tc, rc: rc}
}

func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	read := rawRead
	if s.busy.plain() {
		read = plainRead
	}
	var n int
	var e syscall.Errno
	err := s.rc.Read(func(fd uintptr) bool {
		if n, e = read(fd, p); e == syscall.EAGAIN {
			s.busy.waited()
			return false
		}
		return true
	})
	switch {
	case err != nil:
		return 0, err
	case e != 0:
		return 0, os.NewSyscallError("read", e)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *rawSocket) Write(p []byte) (int, error) {
	done := 0
	var e syscall.Errno
	var stuck bool
	err := s.rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			var n int
			if n, e = rawWrite(fd, p[done:]); e != 0 {
				if e == syscall.EAGAIN {
					e = 0
					return false // wait until the socket takes more
				}
				return true
			}
			if n == 0 {
				stuck = true // as internal/poll: never loop on a zero write
				return true
			}
			done += n
		}
		return true
	})
	switch {
	case err != nil:
		return done, err
	case stuck:
		return done, io.ErrUnexpectedEOF
	case e != 0:
		return done, os.NewSyscallError("write", e)
	}
	return done, nil
}

// plainRead reads from the socket fd with an ordinary system call, whose
// bookkeeping wakes sysmon if it sleeps and whose annotations the race
// detector sees.
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
