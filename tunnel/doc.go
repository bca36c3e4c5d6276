// Package tunnel carries TCP connections over HBONE: HTTP/2 CONNECT inside
// mutual TLS, wire-compatible with Istio's ztunnel.
//
// A node agent uses four pieces, each configured with the collaborators it
// needs (identity and TLS, policy, workload lookup, dialing) through small
// interfaces this package defines:
//
//	Outbound   accepts captured connections and carries each over HBONE (Client)
//	           or passes it through, as its Router decides
//	Server     terminates HBONE: authorizes each CONNECT and joins its Stream
//	           to a connection it dials to the destination
//	Plaintext  accepts captured plaintext bound for a local workload and
//	           authorizes it (or refuses it under STRICT)
//	Client     a pool of HBONE connections; Dial opens a Stream
//
// A Stream is a net.Conn whose CloseWrite is END_STREAM. Each piece records
// its connections in a Registry (Connections, Reauthorize) and reports them
// to an Observer. Cancelling Serve's context ends a piece; Drain ends it
// gracefully.
//
// Where things happen, one file each:
//
//	h2conn.go    one HTTP/2 connection: state, lifecycle, the lock order
//	readloop.go  every frame received is handled here
//	control.go   control frames sent (SETTINGS ACK, PING, WINDOW_UPDATE,
//	             RST_STREAM, GOAWAY) and the connection's timers
//	writer.go    HEADERS and DATA sent, and the one flush to the network
//	flow.go      flow-control windows
//	deliver.go   received DATA into a Stream's buffer or straight into a socket
//	stream.go    Stream: the net.Conn API over one HTTP/2 stream
//	copy.go      where bytes are copied between two connections (pair)
//	client.go, server.go, proxy.go   the pieces above
//	internal/sockio   how sockets are read and written (raw system calls)
//	internal/bufpool  the pooled buffers every copy uses
//
// The HTTP/2 layer is our own, on golang.org/x/net/http2's Framer and
// hpack, because x/net's server cannot end a CONNECT response while still
// reading the request (TCP half-close must travel both ways) and its
// Transport pins up to 512 KiB per open stream. Its settings are ztunnel's
// (h2conn.go). An idle tunnelled connection holds no buffer and, once idle
// for a second, no goroutine: its sockets are parked (copy.go);
// bench/README.md has the measurements behind the design.
package tunnel
