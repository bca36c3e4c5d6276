// Package sockio is how the tunnel reads and writes its TCP sockets. On
// Linux the sockets are non-blocking and their reads and writes are made
// with raw system calls, which skip the Go runtime's system-call
// bookkeeping: the first ordinary call after the process went idle wakes
// the runtime's monitor thread (sysmon), which then polls every 20 µs until
// the process is idle again, and on a request/response load that costs more
// than the reads and writes themselves (bench/README.md). Waiting for a
// socket is still the runtime poller's, through syscall.RawConn.
//
// What the tunnel uses:
//
//	NewConn(c)          a net.Conn whose Read and Write are raw calls (under TLS)
//	NewBatcher(c)       NewConn, and between Begin and End gathers writes into one
//	NewReader(c)        reads into pooled buffers, taken only once data is there
//	TryRead(c, p)       reads what has arrived, without waiting
//	SinkOf(c), TryWriter  writes what a socket takes without blocking
//	Unacked(c)          bytes written the peer has not acknowledged
//	Park(s, c, resume)  waits for an idle socket without a goroutine
//
// FERRY_SOCKIO=plain turns raw calls off: every read and write then goes
// through the syscall package, as the net package's would. Race, msan and
// asan builds always use the syscall package, whose annotations tell the
// detectors that socket I/O orders the goroutines on either end. Mode says
// which is in force.
package sockio
