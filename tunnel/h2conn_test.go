package tunnel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The tests in this file drive one h2conn frame by frame, in process, over a
// loopback TCP connection without TLS: a framePeer plays the other side.
// Each frame type has its happy path and its error paths here; header
// blocks have theirs in headers_test.go.

// testConn is an h2conn under test and the peer facing it.
type testConn struct {
	t       *testing.T
	c       *h2conn
	peer    *framePeer
	streams chan *Stream // server: streams the peer opened
	ended   chan error   // run's result
}

// newTestConn starts an h2conn (a server unless client) and a peer that
// has done its part of the handshake with settings. With noSettings the
// peer sends its preface but no SETTINGS.
func newTestConn(t *testing.T, client, noSettings bool, settings ...http2.Setting) *testConn {
	t.Helper()
	near, far := tcpPair(t)
	h := &testConn{t: t, streams: make(chan *Stream, 16), ended: make(chan error, 1)}
	h.c = newH2Conn(near, connOptions{client: client, log: testLogger(t),
		onStream: func(s *Stream) { h.streams <- s }})
	h.peer = newFramePeer(t, far)
	go func() {
		if err := h.c.handshake(); err != nil {
			h.c.close(err)
			h.ended <- err
			return
		}
		h.ended <- h.c.run()
	}()
	t.Cleanup(func() {
		h.c.close(nil)
		<-h.ended
		for {
			select {
			case s := <-h.streams:
				s.Close()
			default:
				return
			}
		}
	})
	if client {
		h.peer.must(h.peer.ReadPreface())
	} else {
		h.peer.must(h.peer.WritePreface())
	}
	if !noSettings {
		h.peer.must(h.peer.WriteSettings(settings...))
	}
	// The conn's SETTINGS, then its connection WINDOW_UPDATE.
	h.expect("the conn's SETTINGS", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		return ok && !s.IsAck()
	})
	h.expect("the conn's WINDOW_UPDATE", func(f http2.Frame) bool {
		w, ok := f.(*http2.WindowUpdateFrame)
		return ok && w.StreamID == 0 && w.Increment == connWindow-initialWindow
	})
	return h
}

// expect reads frames until one satisfies match, failing on a GOAWAY or an
// error first.
func (h *testConn) expect(what string, match func(http2.Frame) bool) http2.Frame {
	h.t.Helper()
	for {
		f, err := h.peer.ReadFrame()
		if err != nil {
			h.t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return f
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			h.t.Fatalf("waiting for %s: GOAWAY %v", what, ga.ErrCode)
		}
	}
}

// alive checks that the conn still answers a PING.
func (h *testConn) alive() {
	h.t.Helper()
	data := [8]byte{'a', 'l', 'i', 'v', 'e'}
	h.peer.must(h.peer.WritePing(false, data))
	h.expect("a PING ACK", func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck() && p.Data == data
	})
}

// open opens stream id from the peer (server conn) and returns it.
func (h *testConn) open(id uint32, end bool) *Stream {
	h.t.Helper()
	h.peer.headers(id, end, field(":method", "CONNECT"), field(":authority", "198.18.0.1:80"))
	select {
	case s := <-h.streams:
		return s
	case <-time.After(ioGuard):
		h.t.Fatalf("stream %d never opened", id)
		return nil
	}
}

// rst reads until RST_STREAM on id and returns its code.
func (h *testConn) rst(id uint32) http2.ErrCode {
	h.t.Helper()
	f := h.expect("RST_STREAM", func(f http2.Frame) bool {
		r, ok := f.(*http2.RSTStreamFrame)
		return ok && r.StreamID == id
	})
	return f.(*http2.RSTStreamFrame).ErrCode
}

// windowUpdate is a WINDOW_UPDATE payload, for raw frames that carry an
// increment the protocol forbids.
func windowUpdate(inc uint32) []byte { return binary.BigEndian.AppendUint32(nil, inc) }

// TestConnErrors: each frame that breaks the protocol for the whole
// connection is answered with GOAWAY and the code RFC 9113 gives, the
// connection closes, and run reports the protocol error.
func TestConnErrors(t *testing.T) {
	for _, tc := range []struct {
		name       string
		noSettings bool
		send       func(h *testConn)
		want       http2.ErrCode
	}{
		{"first frame not SETTINGS", true, func(h *testConn) { h.peer.WritePing(false, [8]byte{}) }, http2.ErrCodeProtocol},
		{"SETTINGS of a bad length", false, func(h *testConn) { h.peer.raw(http2.FrameSettings, 0, 0, make([]byte, 5)) }, http2.ErrCodeFrameSize},
		{"SETTINGS on a stream", false, func(h *testConn) { h.peer.raw(http2.FrameSettings, 0, 1, nil) }, http2.ErrCodeProtocol},
		{"initial window past 2^31-1", false, func(h *testConn) {
			h.peer.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: maxWindow + 1})
		}, http2.ErrCodeFlowControl},
		{"ENABLE_PUSH of 2", false, func(h *testConn) {
			h.peer.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 2})
		}, http2.ErrCodeProtocol},
		{"PING of a bad length", false, func(h *testConn) { h.peer.raw(http2.FramePing, 0, 0, make([]byte, 7)) }, http2.ErrCodeFrameSize},
		{"PING on a stream", false, func(h *testConn) { h.peer.raw(http2.FramePing, 0, 1, make([]byte, 8)) }, http2.ErrCodeProtocol},
		{"WINDOW_UPDATE of 0 on the connection", false, func(h *testConn) {
			h.peer.raw(http2.FrameWindowUpdate, 0, 0, windowUpdate(0))
		}, http2.ErrCodeProtocol},
		{"connection window past 2^31-1", false, func(h *testConn) {
			h.peer.WriteWindowUpdate(0, maxWindow-initialWindow+1)
		}, http2.ErrCodeFlowControl},
		{"DATA on stream 0", false, func(h *testConn) { h.peer.raw(http2.FrameData, 0, 0, []byte("x")) }, http2.ErrCodeProtocol},
		{"DATA on an idle stream", false, func(h *testConn) { h.peer.WriteData(5, false, []byte("x")) }, http2.ErrCodeProtocol},
		{"DATA padded past its length", false, func(h *testConn) {
			h.open(1, false)
			h.peer.raw(http2.FrameData, http2.FlagDataPadded, 1, []byte{9, 'x'})
		}, http2.ErrCodeProtocol},
		{"DATA past the connection window", false, func(h *testConn) {
			// Five streams of 4 MiB windows; nobody reads: the fifth
			// stream's data exceeds the 16 MiB connection window.
			chunk := make([]byte, 1<<20)
			for id := uint32(1); id <= 9; id += 2 {
				h.open(id, false)
				for range streamWindow / len(chunk) {
					if err := h.peer.WriteData(id, false, chunk); err != nil {
						return // the conn hung up: read its GOAWAY
					}
				}
			}
		}, http2.ErrCodeFlowControl},
		{"frame past SETTINGS_MAX_FRAME_SIZE", false, func(h *testConn) {
			h.open(1, false)
			h.peer.raw(http2.FrameData, 0, 1, make([]byte, advertisedMaxFrame+1))
		}, http2.ErrCodeFrameSize},
		{"PUSH_PROMISE", false, func(h *testConn) {
			h.peer.raw(http2.FramePushPromise, http2.FlagPushPromiseEndHeaders, 1, []byte{0, 0, 0, 2})
		}, http2.ErrCodeProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestConn(t, false, tc.noSettings)
			tc.send(h)
			if got := h.peer.goAway(); got != tc.want {
				t.Fatalf("GOAWAY %v, want %v", got, tc.want)
			}
			var pe *protocolError
			if err := <-h.ended; !errors.As(err, &pe) || pe.code != tc.want {
				t.Fatalf("run returned %v, want a protocol error %v", err, tc.want)
			}
			h.ended <- nil // for the cleanup
		})
	}
}

// TestStreamErrors: a frame that breaks the protocol for one stream resets
// that stream alone, with the code RFC 9113 gives; the stream's reader
// learns it, and the connection goes on.
func TestStreamErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(h *testConn, s *Stream)
		want http2.ErrCode
	}{
		{"stream window past 2^31-1", func(h *testConn, _ *Stream) {
			h.peer.WriteWindowUpdate(1, maxWindow-initialWindow+1)
		}, http2.ErrCodeFlowControl},
		{"WINDOW_UPDATE of 0 on a stream", func(h *testConn, _ *Stream) {
			h.peer.raw(http2.FrameWindowUpdate, 0, 1, windowUpdate(0))
		}, http2.ErrCodeProtocol},
		{"DATA past the stream window", func(h *testConn, _ *Stream) {
			chunk := make([]byte, 1<<20)
			for range streamWindow / len(chunk) {
				h.peer.WriteData(1, false, chunk)
			}
			h.peer.WriteData(1, false, []byte("x"))
		}, http2.ErrCodeFlowControl},
		{"DATA after END_STREAM", func(h *testConn, _ *Stream) {
			h.peer.WriteData(1, true, []byte("end"))
			h.peer.WriteData(1, false, []byte("more"))
		}, http2.ErrCodeStreamClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTestConn(t, false, false)
			s := h.open(1, false)
			tc.send(h, s)
			if got := h.rst(1); got != tc.want {
				t.Fatalf("RST_STREAM %v, want %v", got, tc.want)
			}
			var reset *StreamResetError
			if _, err := io.ReadAll(s); !errors.As(err, &reset) || reset.Code != tc.want {
				t.Fatalf("reading the reset stream: %v, want a reset %v", err, tc.want)
			}
			h.alive()
			s.Close()
		})
	}
}

// TestControlFrames: SETTINGS and PING are acknowledged, a new HPACK table
// size is taken on, and PRIORITY and unknown frame types are ignored.
func TestControlFrames(t *testing.T) {
	h := newTestConn(t, false, false)
	h.expect("a SETTINGS ACK", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		return ok && s.IsAck()
	})
	h.peer.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 256})
	h.expect("a SETTINGS ACK", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		return ok && s.IsAck()
	})
	h.peer.WritePriority(3, http2.PriorityParam{StreamDep: 1, Weight: 7})
	h.peer.raw(0x42, 0, 0, []byte("unknown frame type"))
	h.peer.WritePing(true, [8]byte{'s', 't', 'r', 'a', 'y'}) // an ACK nobody asked for
	h.alive()
	h.c.wmu.Lock()
	size := h.c.henc.MaxDynamicTableSize()
	h.c.wmu.Unlock()
	if size != 256 {
		t.Fatalf("HPACK encoder table size %d after SETTINGS_HEADER_TABLE_SIZE 256", size)
	}
}

// TestDataFrames: DATA reaches the stream without its padding, padding and
// consumed bytes are credited back once half a window is used, and
// END_STREAM ends the stream's reads.
func TestDataFrames(t *testing.T) {
	h := newTestConn(t, false, false)
	s := h.open(1, false)
	pad := make([]byte, 200)
	h.peer.WriteDataPadded(1, false, []byte("padded"), pad)
	h.peer.WriteData(1, false, []byte(" plain"))
	buf := make([]byte, 12)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "padded plain" {
		t.Fatalf("read %q, %v; want %q", buf, err, "padded plain")
	}
	// Send half a stream window; once it is read the conn returns it.
	half := make([]byte, streamWindow/2)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for p := half; len(p) > 0; {
			n := min(len(p), 1<<20)
			h.peer.WriteData(1, false, p[:n])
			p = p[n:]
		}
	}()
	if _, err := io.ReadFull(s, half); err != nil {
		t.Fatal(err)
	}
	f := h.expect("a stream WINDOW_UPDATE", func(f http2.Frame) bool {
		w, ok := f.(*http2.WindowUpdateFrame)
		return ok && w.StreamID == 1
	}).(*http2.WindowUpdateFrame)
	if f.Increment < streamWindow/2 {
		t.Fatalf("stream WINDOW_UPDATE of %d, want at least %d", f.Increment, streamWindow/2)
	}
	<-sent
	h.peer.WriteData(1, true, []byte("bye"))
	rest, err := io.ReadAll(s)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after END_STREAM: read %q, %v; want %q and EOF", rest, err, "bye")
	}
	s.Close()
}

// TestWindowUpdateUnblocksWriter: a writer waits for flow-control credit
// and resumes when WINDOW_UPDATE or a larger SETTINGS_INITIAL_WINDOW_SIZE
// grants it; DATA never exceeds what the peer granted.
func TestWindowUpdateUnblocksWriter(t *testing.T) {
	h := newTestConn(t, false, false, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	h.expect("a SETTINGS ACK", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		return ok && s.IsAck()
	})
	s := h.open(1, false)
	msg := bytes.Repeat([]byte("0123456789"), 10)
	written := make(chan error, 1)
	go func() { _, err := s.Write(msg); written <- err }()
	var got []byte
	readData := func(want int) {
		t.Helper()
		for len(got) < want {
			f := h.expect("DATA", func(f http2.Frame) bool { _, ok := f.(*http2.DataFrame); return ok }).(*http2.DataFrame)
			got = append(got, f.Data()...)
		}
		if len(got) != want {
			t.Fatalf("the conn sent %d bytes, past the %d granted", len(got), want)
		}
	}
	readData(10)
	h.peer.WriteWindowUpdate(1, 30)
	readData(40)
	h.peer.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 70}) // +60
	readData(100)
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("the peer got %q, want %q", got, msg)
	}
	s.Close()
}

// TestPeerReset: RST_STREAM from the peer fails the stream's reads and
// writes with its code; the connection goes on.
func TestPeerReset(t *testing.T) {
	h := newTestConn(t, false, false)
	s := h.open(1, false)
	h.peer.rst(1, http2.ErrCodeCancel)
	var reset *StreamResetError
	if _, err := s.Read(make([]byte, 1)); !errors.As(err, &reset) || reset.Code != http2.ErrCodeCancel {
		t.Fatalf("Read after RST_STREAM: %v, want a reset CANCEL", err)
	}
	if _, err := s.Write([]byte("x")); !errors.As(err, &reset) {
		t.Fatalf("Write after RST_STREAM: %v, want a reset", err)
	}
	s.Close()
	h.alive()
}

// TestPeerGoAway: a server conn told GOAWAY closes once its streams end; a
// client conn fails the streams above the GOAWAY's last stream as refused
// (retryable) and keeps the ones below.
func TestPeerGoAway(t *testing.T) {
	t.Run("server", func(t *testing.T) {
		h := newTestConn(t, false, false)
		s := h.open(1, false)
		h.peer.WriteGoAway(0, http2.ErrCodeNo, nil)
		h.alive() // still serving stream 1
		s.Close()
		if err := <-h.ended; !errors.Is(err, errIdle) {
			t.Fatalf("run returned %v once its last stream closed, want errIdle", err)
		}
		h.ended <- nil
	})
	t.Run("client", func(t *testing.T) {
		h := newTestConn(t, true, false)
		var streams []*Stream
		for range 2 {
			if !h.c.tryReserve() {
				t.Fatal("no stream slot")
			}
			s, _, err := h.c.openStream([]hpack.HeaderField{field(":method", "CONNECT"), field(":authority", "198.18.0.1:80")}, nil)
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, s)
		}
		h.peer.WriteGoAway(1, http2.ErrCodeNo, nil)
		if _, err := streams[1].Read(make([]byte, 1)); !errors.Is(err, errRefused) {
			t.Fatalf("stream 3 above GOAWAY's last stream 1: %v, want errRefused", err)
		}
		h.peer.WriteData(1, true, []byte("kept"))
		if got, err := io.ReadAll(streams[0]); err != nil || string(got) != "kept" {
			t.Fatalf("stream 1: read %q, %v; want %q", got, err, "kept")
		}
		if h.c.tryReserve() {
			t.Fatal("a conn told GOAWAY reserved a new stream")
		}
		for _, s := range streams {
			s.Close()
		}
	})
}
