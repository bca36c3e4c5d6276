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
// agents' CPU per 1 KiB request 153–170 → 97–100 µs). Some reads are
// ordinary calls all the same (sysmonEvery). Race-detector builds use the
// syscall package's calls throughout (rawcall_race.go), whose annotations
// tell the detector that socket I/O orders the goroutines on either end.

// sysmonEvery: of the socket reads a copy loop makes in a row without
// waiting for data, every sysmonEvery-th is an ordinary system call. Raw
// calls let sysmon sleep through a busy spell, and with it its preemption
// of goroutines that never block (a copy between two fast sockets may not)
// and its network polling while every processor is busy; an ordinary call
// wakes it, and it stays awake while the process is busy. A loop that
// waits for data yields its processor anyway and leaves sysmon asleep
// (counting every read instead woke sysmon on request/response loads: rr1k
// agent CPU 95–100 µs per request, against 87–93).
const sysmonEvery = 64

// busyReads counts a copy loop's reads since it last waited for data.
type busyReads int

// plain counts a read and reports whether it is to be an ordinary call.
func (b *busyReads) plain() bool { *b++; return *b%sysmonEvery == 0 }

// waited records that a read had to wait for data.
func (b *busyReads) waited() { *b = 0 }

// rawSocket is a TCP connection whose Read and Write use raw system calls;
// everything else is the TCPConn's. It is used by one reader and one
// writer at a time, as crypto/tls uses the connection under it.
type rawSocket struct {
	*net.TCPConn
	rc   syscall.RawConn
	busy busyReads
	r, w rawOp
}

// rawOp is a socket's read or write in progress. The function handed to
// RawConn.Read or Write is made once per socket and finds its arguments
// and leaves its results here: a closure made per call would allocate the
// variables it shares with its caller on every call.
type rawOp struct {
	p     []byte
	n     int
	e     syscall.Errno
	plain bool // read: an ordinary call (see sysmonEvery)
	stuck bool // write: the socket took zero bytes
	fn    func(fd uintptr) bool
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
	s := &rawSocket{TCPConn: tc, rc: rc}
	s.r.fn = func(fd uintptr) bool { return s.r.read(fd, &s.busy) }
	s.w.fn = func(fd uintptr) bool {
		for s.w.n < len(s.w.p) {
			n, e := rawWrite(fd, s.w.p[s.w.n:])
			if e == syscall.EAGAIN {
				return false // wait until the socket takes more
			}
			if e != 0 {
				s.w.e = e
				return true
			}
			if n == 0 {
				s.w.stuck = true // as internal/poll: never loop on a zero write
				return true
			}
			s.w.n += n
		}
		return true
	}
	return s
}

func (s *rawSocket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.r.p, s.r.n, s.r.e, s.r.plain = p, 0, 0, s.busy.plain()
	err := s.rc.Read(s.r.fn)
	s.r.p = nil
	return readResult(s.r.n, s.r.e, err)
}

// read makes one read of op.p from the socket fd, raw or ordinary as
// op.plain says, for a RawConn.Read: false, to wait, when nothing is there.
func (op *rawOp) read(fd uintptr, busy *busyReads) bool {
	read := rawRead
	if op.plain {
		read = plainRead
	}
	if op.n, op.e = read(fd, op.p); op.e == syscall.EAGAIN {
		busy.waited()
		return false
	}
	return true
}

// readResult turns a socket read's count, errno and RawConn error into
// what io.Reader returns.
func readResult(n int, e syscall.Errno, err error) (int, error) {
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
	s.w.p, s.w.n, s.w.e, s.w.stuck = p, 0, 0, false
	err := s.rc.Write(s.w.fn)
	done, e, stuck := s.w.n, s.w.e, s.w.stuck
	s.w.p = nil
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
