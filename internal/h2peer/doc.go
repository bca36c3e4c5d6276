// Package h2peer is a hand-driven HTTP/2 peer for tests. It writes exactly
// the frames a test asks for, in any order, legal or not, and reads what the
// other side sends back, so a test can drive Ferry's HTTP/2 code frame by
// frame: in process (tunnel's tests) or against a running agent
// (e2e/adversarial).
//
// A Peer wraps one net.Conn, plain or TLS, in an x/net/http2 Framer and keeps
// an HPACK encoder and decoder in step with the other side: every header
// block it writes goes through its encoder and every one it reads through its
// decoder, so a later block that refers to the dynamic table is written and
// read right.
//
//	p, err := h2peer.Client(conn)                   // preface and SETTINGS
//	err = p.Connect(1, "10.0.0.2:8080")             // CONNECT on stream 1
//	st, err := p.Status(1, 10*time.Second)          // its :status
//	err = p.RoundTrip(1, []byte("hi"), time.Second) // through an echo upstream
//
//	blk := p.Encode(h2peer.ConnectFields("10.0.0.2:8080")...)
//	err = p.WriteHeaderBlock(3, false, false, blk[:2]) // no END_HEADERS
//	err = p.WriteRawFrame(http2.FramePing, 0, 3, make([]byte, 8))
//	code, err := p.WaitGoAway(10 * time.Second)     // PROTOCOL_ERROR
//
// Writes are safe from several goroutines; WriteFrames holds the write lock
// for a batch no other write may split. Reads belong to one goroutine. Next,
// and the helpers built on it (Status, WaitHeaders, WaitReset, WaitSettings,
// RoundTrip), answer SETTINGS and PING and return flow-control credit, as a
// live peer must. ReadFrame, WaitGoAway and WaitClosed answer nothing, so
// they never put a frame where the test did not (inside a header block it
// left open, say).
//
// Methods return errors rather than failing a test, so they can be called
// from any goroutine; the caller decides what a failure means. The package
// is imported only from _test.go files.
package h2peer
