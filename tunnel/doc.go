// Package tunnel carries TCP connections over HBONE: HTTP/2 CONNECT inside
// mutual TLS, wire-compatible with Istio's ztunnel. It has the HBONE server and
// pooled client, the outbound, inbound and plaintext proxy loops, and the byte
// copier. Its collaborators (identity, policy, workload lookup, dialing) come in
// through small interfaces it defines.
//
// The HTTP/2 layer is our own, on golang.org/x/net/http2's Framer and hpack,
// because x/net's server cannot end a CONNECT response while still reading
// the request (TCP half-close must travel both ways) and its Transport pins
// up to 512 KiB per open stream. One connection type serves both roles:
//
//   - Settings as ztunnel: 4 MiB stream and 16 MiB connection receive
//     windows, returned with WINDOW_UPDATE once half is consumed by the
//     reader; 1 MiB maximum frame accepted, DATA frames of at most 256 KiB
//     sent; 16 KiB header lists; 100 concurrent streams.
//   - Received DATA goes straight into pooled chunks that are released as soon
//     as they are read or forwarded, so an idle stream holds no buffer.
//     Proxying from a stream into a TCP socket needs no goroutine while
//     idle: the read loop writes chunks of up to 64 KiB to the socket itself
//     when nothing is queued and the socket takes them, and a drain
//     goroutine runs only while bytes wait (a full socket, bulk chunks) or
//     to carry the stream's end or failure over. Proxying to a stream runs
//     on a fresh goroutine with a small stack, which first waits for the
//     socket to be readable, then takes a buffer (16 KiB, growing to 256 KiB
//     while reads fill it). An idle tunnelled connection costs each proxy
//     one small goroutine, two sockets and a few KiB of heap.
//   - Writers (DATA, and the END_STREAM of CloseWrite) append frames to
//     one pooled output buffer under a mutex and the last writer out
//     flushes, so frames queued together leave in one TLS write; payloads
//     of 16 KiB and more are written without a copy, and the TLS records of
//     a large write are gathered into one system call (crypto/tls writes
//     each record on its own). Write deadlines move only
//     once a quarter of the keepalive timeout is used, since moving one
//     wakes the runtime's network poller.
//     The read loop never writes: control frames (SETTINGS ACK, PING,
//     WINDOW_UPDATE, RST_STREAM, GOAWAY) go through a queue to a control
//     writer, which also runs the keepalive, idle and first-stream timers.
//   - On Linux the hot socket I/O uses raw system calls (the sockets are
//     non-blocking): reads by copy loops and under TLS, the read loop's
//     writes to sockets, and every write under TLS. That keeps the
//     runtime's sysmon thread asleep between requests; of the reads a loop
//     makes without waiting for data, every 64th is an ordinary call, so
//     that sysmon is awake through a spell that never yields
//     (rawio_linux.go). The drain goroutine, TCP-to-TCP copies
//     (passthrough, plaintext), settling and race builds use the net and
//     syscall packages.
//   - END_STREAM is CloseWrite; closing a stream with unread data or an open
//     write side resets it, as closing a TCP socket would.
//   - Protocol errors are answered with GOAWAY; header blocks beyond 16 KiB
//     or 32 frames (CONTINUATION floods), peers resetting most of the
//     streams they open (rapid reset) and silent peers (PING timeout, write
//     timeout) end the connection.
//   - Every header block is decoded in full, a refused stream's included,
//     since the HPACK table is the connection's; so any error in one (it
//     does not decode, breaks the frame sequence, decodes past 16 KiB, or
//     names a stream that can't take it: reused, lower than one opened,
//     after END_STREAM, never opened by the client) ends the connection
//     with GOAWAY (RFC 9113 §4.3, §5.1.1). A request that decodes but is
//     malformed (no :authority, repeated pseudo-headers) gets 400 on its
//     stream alone. Stream IDs are never reused; a client connection that
//     runs out of them closes once idle.
package tunnel
