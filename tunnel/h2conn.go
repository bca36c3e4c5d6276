package tunnel

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HTTP/2 parameters, as ztunnel uses them (DESIGN §4).
const (
	streamWindow       = 4 << 20   // receive window advertised per stream
	connWindow         = 16 << 20  // receive window of the whole connection
	advertisedMaxFrame = 1 << 20   // SETTINGS_MAX_FRAME_SIZE we accept
	maxWriteChunk      = 256 << 10 // largest DATA payload we send
	directWrite        = 16 << 10  // payloads from this size skip the output buffer
	tlsRecord          = 16 << 10  // largest TLS record payload
	maxHeaderListSize  = 16 << 10  // decoded header list, HEADERS+CONTINUATION
	maxHeaderFrames    = 32        // frames in one header block
	defaultMaxStreams  = 100       // concurrent streams per connection
	initialWindow      = 65535     // RFC 9113 default window
	flushThreshold     = 64 << 10  // write out the buffer once it holds this much
	maxQueuedControl   = 1024      // control frames waiting for a peer that does not read
	smallRead          = 1 << 10   // DATA payloads up to this size are coalesced
	maxInline          = 64 << 10  // largest chunk the read loop writes to a stream's socket itself
	maxStreamID        = 1<<31 - 1
)

var (
	// errConnClosed is returned by stream operations once the HTTP/2
	// connection is gone.
	errConnClosed = errors.New("tunnel: HTTP/2 connection closed")
	// errRefused reports a stream the peer did not process (GOAWAY or
	// REFUSED_STREAM); the request may be retried on another connection.
	errRefused = errors.New("tunnel: stream refused by peer")
	// errPingTimeout closes a connection whose peer stopped answering PINGs.
	errPingTimeout = errors.New("tunnel: keepalive ping timed out")
	// errIdle closes a connection that carried no stream for its idle time.
	errIdle = errors.New("tunnel: connection idle")
)

// StreamResetError reports that the peer reset a stream with RST_STREAM.
type StreamResetError struct {
	Code http2.ErrCode
}

func (e *StreamResetError) Error() string {
	return "tunnel: stream reset by peer: " + e.Code.String()
}

// connOptions configures one HTTP/2 connection.
type connOptions struct {
	client     bool
	maxStreams int // streams the local side accepts (server) at once
	// keepalive sends a PING after this long without reading a frame; the
	// connection closes when no frame arrives within keepaliveTimeout.
	keepalive, keepaliveTimeout time.Duration
	// idleTimeout closes the connection after this long without a stream.
	idleTimeout time.Duration
	// firstStreamTimeout closes a server connection on which no stream has
	// been opened this long after the preface.
	firstStreamTimeout time.Duration
	// onStream is called on the read loop for each new peer stream (server).
	// It must not block; it owns s and must Close it.
	onStream func(s *Stream)
	log      *slog.Logger
	// records, when set, is the socket under nc's TLS; large writes
	// gather their records there into one system call.
	records *recordCoalescer
}

// ctlFrame is a frame queued for the control writer: the read loop never
// writes to the network itself, so a peer that stops reading can't stall it.
type ctlFrame struct {
	typ    http2.FrameType
	flags  http2.Flags
	stream uint32
	val    uint32 // window increment, error code, last stream ID
	data   [8]byte
}

// h2conn is one HTTP/2 connection carrying CONNECT streams, client or server
// side. Its read loop and control writer run in run; stream data is written
// by the goroutine calling Stream.Write, under wmu, and the last writer out
// flushes, so frames queued together leave in one TLS write.
type h2conn struct {
	nc    net.Conn
	opt   connOptions
	fr    *http2.Framer // frames are read by the read loop and written under wmu
	hdec  *hpack.Decoder
	start time.Time

	// Write side, guarded by wmu.
	wmu     fifoLock
	wbuf    []byte    // pending output, pooled; nil when empty
	wdl     time.Time // write deadline last set on nc
	henc    *hpack.Encoder
	hbuf    headerBuffer
	werr    error
	writers atomic.Int32 // goroutines holding or waiting for wmu

	ctlWake  chan struct{} // wakes the control writer
	done     chan struct{} // closed once the connection is closed
	lastRead atomic.Int64  // unix nanoseconds of the last frame read

	// Read loop state, owned by the read loop.
	hdrStream uint32
	hdrEnd    bool
	hdrFrames int
	hdrBlock  []byte
	small     [smallRead]byte
	inline    tryWriter // writes to streams' sockets (deliverLocked)

	mu            sync.Mutex
	streams       map[uint32]*Stream // open in the protocol sense
	ctl           []ctlFrame
	nextID        uint32 // next client stream ID
	lastPeerID    uint32 // highest stream ID the peer opened
	sendWindow    int64
	recvAvail     int64 // what the peer may still send on the connection
	unacked       int64 // consumed, not yet returned with WINDOW_UPDATE
	peerMaxFrame  uint32
	peerInitWnd   int64
	peerMaxStream uint32
	reserved      int // client: slots promised by the pool
	active        int // streams holding a slot (until Stream.Close)
	opened        int
	earlyResets   int
	goingAway     bool // no new streams
	closeOnIdle   bool // close once active reaches zero
	closed        bool
	closeErr      error
	everStream    bool
	idleSince     time.Time
	pingOut       bool
	pingSent      time.Time
	pingSeq       uint64
}

// fifoLock is a mutex that hands itself to waiters in arrival order (a
// channel's queued senders are served first come, first served), so a bulk
// writer can't barge ahead of a small one again and again.
type fifoLock chan struct{}

func (l fifoLock) Lock()   { l <- struct{}{} }
func (l fifoLock) Unlock() { <-l }

// headerBuffer collects hpack output.
type headerBuffer struct{ b []byte }

func (h *headerBuffer) Write(p []byte) (int, error) { h.b = append(h.b, p...); return len(p), nil }

// frameSink appends what the Framer writes to the connection's buffer.
type frameSink struct{ c *h2conn }

func (s frameSink) Write(p []byte) (int, error) {
	s.c.appendLocked(p)
	return len(p), nil
}

func newH2Conn(nc net.Conn, opt connOptions) *h2conn {
	if opt.maxStreams <= 0 {
		opt.maxStreams = defaultMaxStreams
	}
	if opt.log == nil {
		opt.log = slog.New(slog.DiscardHandler)
	}
	c := &h2conn{
		nc:            nc,
		opt:           opt,
		start:         time.Now(),
		wmu:           make(fifoLock, 1),
		ctlWake:       make(chan struct{}, 1),
		done:          make(chan struct{}),
		streams:       make(map[uint32]*Stream),
		nextID:        1,
		sendWindow:    initialWindow,
		recvAvail:     connWindow,
		peerMaxFrame:  16384,
		peerInitWnd:   initialWindow,
		peerMaxStream: defaultMaxStreams,
	}
	c.idleSince = c.start
	c.lastRead.Store(c.start.UnixNano())
	c.fr = http2.NewFramer(frameSink{c}, nc)
	c.fr.SetMaxReadFrameSize(advertisedMaxFrame)
	c.hdec = hpack.NewDecoder(4096, nil)
	c.hdec.SetMaxStringLength(maxHeaderListSize)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// handshake writes the preface (client) and our SETTINGS, then, on a
// server, reads the client preface. The peer's SETTINGS are read by run.
// The caller clears nc's deadlines afterwards.
func (c *h2conn) handshake() error {
	if !c.opt.client {
		// Read first: over an unbuffered transport both sides writing at
		// once would wait for each other.
		var p [len(http2.ClientPreface)]byte
		if _, err := io.ReadFull(c.nc, p[:]); err != nil {
			return fmt.Errorf("tunnel: read client preface: %w", err)
		}
		if string(p[:]) != http2.ClientPreface {
			return errors.New("tunnel: bad HTTP/2 client preface")
		}
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.opt.client {
		c.appendLocked([]byte(http2.ClientPreface))
	}
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		{ID: http2.SettingMaxFrameSize, Val: advertisedMaxFrame},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
	}
	if c.opt.client {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(c.opt.maxStreams)})
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		return err
	}
	if err := c.fr.WriteWindowUpdate(0, connWindow-initialWindow); err != nil {
		return err
	}
	err := c.flushLocked(nil)
	c.wdl = time.Time{}
	return err
}

// run reads frames until the connection fails or closes, then waits for the
// control writer. It returns the reason the connection ended.
func (c *h2conn) run() error {
	var wg sync.WaitGroup
	wg.Go(c.ctlLoop)
	err := c.readLoop()
	var pe *protocolError
	if errors.As(err, &pe) {
		c.linger()
	}
	c.close(err)
	wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closeErr
}

// protocolError is a connection error we answered with GOAWAY.
type protocolError struct {
	code http2.ErrCode
	msg  string
}

func (e *protocolError) Error() string {
	return fmt.Sprintf("tunnel: HTTP/2 %s: %s", e.code, e.msg)
}

// lingerTime bounds how long a connection ended by a protocol error keeps
// reading after its GOAWAY, so the peer gets to read the GOAWAY rather than
// a TCP reset.
const lingerTime = time.Second

// linger writes the queued GOAWAY, ends our write side and drains what the
// peer still sends for a moment before the connection is closed.
func (c *h2conn) linger() {
	c.writeCtl()
	c.wmu.Lock()
	// What a writer still waiting for wmu left buffered goes out first.
	c.flushLocked(nil)
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok && c.werr == nil {
		cw.CloseWrite()
	}
	c.wmu.Unlock()
	c.nc.SetReadDeadline(time.Now().Add(lingerTime))
	io.Copy(io.Discard, io.LimitReader(c.nc, 4<<20))
}

// readLoop dispatches frames until an error.
func (c *h2conn) readLoop() error {
	first := true
	for {
		fh, err := c.fr.ReadFrameHeader()
		if err != nil {
			return c.readError(err)
		}
		c.lastRead.Store(time.Now().UnixNano())
		if first && fh.Type != http2.FrameSettings {
			return c.connError(http2.ErrCodeProtocol, "first frame is not SETTINGS")
		}
		first = false
		if fh.Type == http2.FrameData {
			if err := c.readData(fh); err != nil {
				return err
			}
			continue
		}
		if fh.Type == http2.FrameHeaders && fh.Length < headersPrefix(fh.Flags) {
			// Too short for its pad length or priority: a frame size error,
			// and one that carries a header block ends the connection
			// (RFC 9113 §4.2).
			return c.connError(http2.ErrCodeFrameSize, "HEADERS frame too short")
		}
		f, err := c.fr.ReadFrameForHeader(fh)
		var se http2.StreamError
		if errors.As(err, &se) && se.StreamID != 0 && !isHeaderFrame(fh.Type) {
			// A malformed frame for one stream ends only that stream. A
			// malformed HEADERS or CONTINUATION (bad padding) is left to
			// readError: its header block can't be decoded, so HPACK's state
			// is lost (RFC 9113 §4.3).
			c.mu.Lock()
			if s := c.streams[se.StreamID]; s != nil {
				c.resetLocked(s, se.Code, &StreamResetError{Code: se.Code})
			} else {
				c.queueLocked(ctlFrame{typ: http2.FrameRSTStream, stream: se.StreamID, val: uint32(se.Code)})
			}
			c.mu.Unlock()
			continue
		}
		if err != nil {
			return c.readError(err)
		}
		if err := c.handleFrame(f); err != nil {
			return err
		}
		c.mu.Lock()
		queued := len(c.ctl)
		c.mu.Unlock()
		if queued > maxQueuedControl {
			// The peer sends PINGs, SETTINGS or resets faster than it reads
			// our answers: stop reading before the queue costs more memory.
			return c.connError(http2.ErrCodeEnhanceYourCalm, "peer does not read its control frames")
		}
	}
}

// isHeaderFrame reports the frame types that carry a header block.
func isHeaderFrame(t http2.FrameType) bool {
	return t == http2.FrameHeaders || t == http2.FrameContinuation
}

// headersPrefix is the least payload a HEADERS frame with flags must have:
// the pad length and the priority fields it announces.
func headersPrefix(flags http2.Flags) uint32 {
	var n uint32
	if flags.Has(http2.FlagHeadersPadded) {
		n++
	}
	if flags.Has(http2.FlagHeadersPriority) {
		n += 5
	}
	return n
}

// readError turns a framer error into the connection's end, answering
// protocol errors with GOAWAY.
func (c *h2conn) readError(err error) error {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		return c.connError(http2.ErrCode(ce), "frame error: "+err.Error())
	case errors.Is(err, http2.ErrFrameTooLarge):
		return c.connError(http2.ErrCodeFrameSize, "frame too large")
	}
	var se http2.StreamError
	if errors.As(err, &se) {
		// Not produced by the framer without ReadMetaHeaders; treat as fatal.
		return c.connError(se.Code, se.Error())
	}
	return err
}

// connError sends GOAWAY with code and reports a connection error.
func (c *h2conn) connError(code http2.ErrCode, msg string) error {
	err := &protocolError{code: code, msg: msg}
	c.mu.Lock()
	c.goingAway = true
	c.queueLocked(ctlFrame{typ: http2.FrameGoAway, val: c.lastPeerID, data: [8]byte{byte(code >> 24), byte(code >> 16), byte(code >> 8), byte(code)}})
	c.mu.Unlock()
	return err
}

func (c *h2conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame:
		if f.StreamID == 0 {
			return c.connError(http2.ErrCodeProtocol, "HEADERS on stream 0")
		}
		// The framer has already checked that header blocks are not
		// interleaved with other frames (RFC 9113 §6.10) and answers a
		// stray CONTINUATION with a connection error.
		c.hdrStream, c.hdrEnd, c.hdrFrames = f.StreamID, f.StreamEnded(), 1
		c.hdrBlock = append(c.hdrBlock[:0], f.HeaderBlockFragment()...)
		if len(c.hdrBlock) > maxHeaderListSize {
			return c.connError(http2.ErrCodeEnhanceYourCalm, "header block too large")
		}
		if f.HeadersEnded() {
			return c.endHeaders()
		}
		return nil
	case *http2.ContinuationFrame:
		c.hdrFrames++
		c.hdrBlock = append(c.hdrBlock, f.HeaderBlockFragment()...)
		if c.hdrFrames > maxHeaderFrames || len(c.hdrBlock) > maxHeaderListSize {
			return c.connError(http2.ErrCodeEnhanceYourCalm, "header block too large")
		}
		if f.HeadersEnded() {
			return c.endHeaders()
		}
		return nil
	case *http2.SettingsFrame:
		return c.handleSettings(f)
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.PingFrame:
		c.mu.Lock()
		if f.IsAck() {
			c.pingOut = false
		} else {
			c.queueLocked(ctlFrame{typ: http2.FramePing, flags: http2.FlagPingAck, data: f.Data})
		}
		c.mu.Unlock()
		return nil
	case *http2.RSTStreamFrame:
		c.handleReset(f)
		return nil
	case *http2.GoAwayFrame:
		c.handleGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		return c.connError(http2.ErrCodeProtocol, "PUSH_PROMISE")
	default:
		// PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).
		return nil
	}
}

func (c *h2conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	var tableSize uint32 = 4096
	setTable := false
	c.mu.Lock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitWnd
			c.peerInitWnd = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > maxStreamID {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.wakeWrite()
			}
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStream = s.Val
		case http2.SettingHeaderTableSize:
			tableSize, setTable = s.Val, true
		case http2.SettingEnablePush:
			if c.opt.client && s.Val != 0 {
				return http2.ConnectionError(http2.ErrCodeProtocol)
			}
		}
		return nil
	})
	ack := ctlFrame{typ: http2.FrameSettings, flags: http2.FlagSettingsAck}
	if setTable {
		ack.val = tableSize
		ack.data[0] = 1
	}
	c.queueLocked(ack)
	c.mu.Unlock()
	if err != nil {
		return c.readError(err)
	}
	return nil
}

func (c *h2conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		over := c.sendWindow > maxStreamID
		for _, s := range c.streams {
			s.wakeWrite()
		}
		c.mu.Unlock()
		if over {
			return c.connError(http2.ErrCodeFlowControl, "connection window overflow")
		}
		return nil
	}
	defer c.mu.Unlock()
	if s := c.streams[f.StreamID]; s != nil {
		s.sendWindow += int64(f.Increment)
		if s.sendWindow > maxStreamID {
			c.resetLocked(s, http2.ErrCodeFlowControl, &StreamResetError{Code: http2.ErrCodeFlowControl})
			return nil
		}
		s.wakeWrite()
	}
	return nil
}

func (c *h2conn) handleReset(f *http2.RSTStreamFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if !c.opt.client && (s == nil || !s.responded) {
		// Resets of streams not yet answered (or refused) cost us work for
		// nothing: a client doing little else is abusive (CVE-2023-44487).
		c.earlyResets++
		if c.earlyResets > 200 && c.earlyResets > c.opened/2 && !c.closeOnIdle {
			c.goingAway = true
			c.queueLocked(ctlFrame{typ: http2.FrameGoAway, val: c.lastPeerID, data: codeBytes(http2.ErrCodeEnhanceYourCalm)})
			c.closeOnIdle = true
		}
	}
	if s == nil {
		return
	}
	var err error = &StreamResetError{Code: f.ErrCode}
	if f.ErrCode == http2.ErrCodeRefusedStream {
		err = errRefused
	}
	if s.recvDone {
		// The peer finished sending and now refuses more data (RFC 9113
		// §8.1): what it sent stays readable; only writes fail.
		s.wreset = err
		delete(c.streams, s.id)
		s.wakeWrite()
		s.writeEndedLocked()
		return
	}
	c.forgetLocked(s, err)
}

func (c *h2conn) handleGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.goingAway = true
	c.closeOnIdle = true
	if c.opt.client {
		for id, s := range c.streams {
			if id > f.LastStreamID {
				c.forgetLocked(s, errRefused)
			}
		}
	}
	if c.active == 0 && c.reserved == 0 {
		c.idleSince = time.Time{} // close at the next tick
		c.signalCtl()
	}
}

// endHeaders decodes a complete header block and dispatches it.
//
// The block is decoded in full whatever becomes of its stream, refused or
// reset ones included: HPACK's dynamic table is shared by the whole
// connection, and a block left undecoded would garble every later one. For
// the same reason any error in the block itself (it does not decode, it
// decodes to more than we advertised, or it names a stream that can't
// carry it) ends the connection (RFC 9113 §4.3, §5.1.1). Only a request or
// response that decodes well but is malformed (RFC 9113 §8.1.1) ends just
// its stream.
func (c *h2conn) endHeaders() error {
	var fields []hpack.HeaderField
	size := 0
	tooBig := false
	c.hdec.SetEmitFunc(func(f hpack.HeaderField) {
		size += int(f.Size())
		if size > maxHeaderListSize {
			tooBig = true
			return
		}
		fields = append(fields, f)
	})
	if _, err := c.hdec.Write(c.hdrBlock); err != nil {
		return c.connError(http2.ErrCodeCompression, err.Error())
	}
	if err := c.hdec.Close(); err != nil {
		return c.connError(http2.ErrCodeCompression, err.Error())
	}
	if cap(c.hdrBlock) > 4<<10 {
		c.hdrBlock = nil
	}
	if tooBig {
		// Decoded in full, so HPACK's state is intact; but the peer ignored
		// our SETTINGS_MAX_HEADER_LIST_SIZE, and a peer that does so once
		// is not served further.
		return c.connError(http2.ErrCodeProtocol, "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE")
	}
	c.mu.Lock()
	code, msg := c.dispatchHeadersLocked(c.hdrStream, c.hdrEnd, fields)
	c.mu.Unlock()
	if msg != "" {
		return c.connError(code, msg)
	}
	return nil
}

// dispatchHeadersLocked hands a decoded header block to its stream, or
// opens one (server). A non-empty msg is a connection error with code.
func (c *h2conn) dispatchHeadersLocked(id uint32, end bool, fields []hpack.HeaderField) (code http2.ErrCode, msg string) {
	if s := c.streams[id]; s != nil {
		return c.streamHeadersLocked(s, end, fields)
	}
	if c.opt.client {
		if id%2 == 0 || id >= c.nextID {
			return http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on stream %d, which the client never opened", id)
		}
		// A stream we reset or closed: the peer may have sent this before
		// it learned so (RFC 9113 §5.1); decoded above, dropped.
		return 0, ""
	}
	switch {
	case id%2 == 0:
		return http2.ErrCodeProtocol, "even stream ID from client"
	case id <= c.lastPeerID:
		// Not open, and not new: a stream that was closed or reset, by
		// either side, or one skipped over. A stream ID is never used twice
		// (RFC 9113 §5.1.1).
		return http2.ErrCodeProtocol, fmt.Sprintf("HEADERS on stream %d, at or below stream %d already opened", id, c.lastPeerID)
	}
	c.lastPeerID = id
	if c.goingAway || c.closed || c.active >= c.opt.maxStreams {
		c.queueLocked(ctlFrame{typ: http2.FrameRSTStream, stream: id, val: uint32(http2.ErrCodeRefusedStream)})
		return 0, ""
	}
	s := c.newStreamLocked(id)
	s.reqFields = fields
	if end {
		s.endRecvLocked()
	}
	c.opened++
	c.opt.onStream(s)
	return 0, ""
}

// streamHeadersLocked takes a header block for an open stream: the
// response (client), or trailers.
func (c *h2conn) streamHeadersLocked(s *Stream, end bool, fields []hpack.HeaderField) (code http2.ErrCode, msg string) {
	if s.recvDone {
		return http2.ErrCodeStreamClosed, fmt.Sprintf("HEADERS on stream %d after its END_STREAM", s.id)
	}
	if c.opt.client && !s.gotResponse {
		status, err := strconv.Atoi(headerValue(fields, ":status"))
		if err != nil || status < 100 || status > 999 || (status < 200 && end) {
			c.resetLocked(s, http2.ErrCodeProtocol, errors.New("tunnel: malformed response headers"))
			return 0, ""
		}
		if status < 200 {
			return 0, "" // informational; the final response follows
		}
		s.gotResponse, s.status, s.respFields = true, status, fields
		close(s.respReady)
		if end {
			s.endRecvLocked()
		}
		return 0, ""
	}
	// Trailers: the last frame of the stream, without pseudo-headers (RFC
	// 9113 §8.1).
	if !end {
		return http2.ErrCodeProtocol, fmt.Sprintf("second header block on stream %d without END_STREAM", s.id)
	}
	for _, f := range fields {
		if strings.HasPrefix(f.Name, ":") {
			return http2.ErrCodeProtocol, fmt.Sprintf("pseudo-header %s in trailers on stream %d", f.Name, s.id)
		}
	}
	s.endRecvLocked()
	return 0, ""
}

// newStreamLocked registers a stream holding one slot.
func (c *h2conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{
		c:          c,
		id:         id,
		sendWindow: c.peerInitWnd,
		recvAvail:  streamWindow,
		rwake:      make(chan struct{}, 1),
		wwake:      make(chan struct{}, 1),
	}
	if c.opt.client {
		s.respReady = make(chan struct{})
	}
	c.streams[id] = s
	c.active++
	c.everStream = true
	return s
}

// readData moves a DATA frame's payload straight into the stream's
// receive buffer.
func (c *h2conn) readData(fh http2.FrameHeader) error {
	if fh.StreamID == 0 {
		return c.connError(http2.ErrCodeProtocol, "DATA on stream 0")
	}
	n := int(fh.Length)
	pad := 0
	if fh.Flags.Has(http2.FlagDataPadded) {
		if n < 1 {
			return c.connError(http2.ErrCodeProtocol, "bad padding")
		}
		var b [1]byte
		if _, err := io.ReadFull(c.nc, b[:]); err != nil {
			return err
		}
		pad = int(b[0])
		n--
		if pad > n {
			return c.connError(http2.ErrCodeProtocol, "bad padding")
		}
		n -= pad
	}
	c.mu.Lock()
	c.recvAvail -= int64(fh.Length)
	if c.recvAvail < 0 {
		c.mu.Unlock()
		return c.connError(http2.ErrCodeFlowControl, "connection window exceeded")
	}
	s := c.streams[fh.StreamID]
	if s != nil && (s.recvDone || s.err != nil) {
		c.resetLocked(s, http2.ErrCodeStreamClosed, &StreamResetError{Code: http2.ErrCodeStreamClosed})
		s = nil
	}
	if s == nil && !c.opt.client && fh.StreamID > c.lastPeerID {
		c.mu.Unlock()
		return c.connError(http2.ErrCodeProtocol, "DATA on idle stream")
	}
	if s != nil {
		s.recvAvail -= int64(fh.Length)
		if s.recvAvail < 0 {
			c.resetLocked(s, http2.ErrCodeFlowControl, &StreamResetError{Code: http2.ErrCodeFlowControl})
			s = nil
		}
	}
	if s == nil {
		c.creditLocked(nil, int64(fh.Length))
		c.mu.Unlock()
		return c.discard(n + pad)
	}
	// Padding counts against flow control but is never read by anyone.
	if pad > 0 || fh.Flags.Has(http2.FlagDataPadded) {
		c.creditLocked(s, int64(int(fh.Length)-n))
	}
	c.mu.Unlock()

	if n <= smallRead {
		if _, err := io.ReadFull(c.nc, c.small[:n]); err != nil {
			return err
		}
		c.mu.Lock()
		c.deliverLocked(s, c.small[:n], false)
	} else {
		for rest := n; rest > 0; {
			buf := getBuf(min(rest, maxBufSize))
			k := min(rest, len(buf))
			if _, err := io.ReadFull(c.nc, buf[:k]); err != nil {
				putBuf(buf)
				return err
			}
			rest -= k
			c.mu.Lock()
			c.deliverLocked(s, buf[:k], true)
			if rest > 0 {
				c.mu.Unlock()
			}
		}
	}
	if fh.Flags.Has(http2.FlagDataEndStream) {
		s.endRecvLocked()
	}
	c.mu.Unlock()
	if pad > 0 {
		return c.discard(pad)
	}
	return nil
}

// deliverLocked appends p to s's receive buffer, or credits it back when the
// stream is already gone. With own, p is a pooled buffer handed over.
func (c *h2conn) deliverLocked(s *Stream, p []byte, own bool) {
	if len(p) == 0 {
		if own {
			putBuf(p)
		}
		return
	}
	if s.err != nil || s.closedLocal {
		c.creditLocked(nil, int64(len(p)))
		if own {
			putBuf(p)
		}
		return
	}
	if len(p) <= maxInline && s.sink != nil && !s.draining && s.recv.n == 0 && s.sinkErr == nil {
		// Nothing is queued and no drain runs: hand the bytes to the
		// destination socket from here if it takes them without blocking,
		// which saves a goroutine wake-up per message. Bulk chunks go to
		// the drain goroutine instead, so that the read loop decrypts the
		// next frame while they are written, and streams sharing the
		// connection are written out in parallel.
		s.inlineBusy = true
		sink, count := s.sink, s.sinkCount
		c.mu.Unlock()
		count(len(p)) // counted when read, before the peer can answer
		k, err := c.inline.write(sink, p)
		c.mu.Lock()
		s.inlineBusy = false
		if s.inlineWait {
			s.inlineWait = false
			s.wakeRead()
		}
		if err != nil {
			s.sinkErr = err
		}
		if k > 0 {
			c.creditLocked(s, int64(k))
		}
		if k < len(p) {
			if err != nil || s.err != nil || s.closedLocal {
				c.creditLocked(nil, int64(len(p)-k))
			} else {
				s.recv.push(p[k:], false)
				s.precounted += len(p) - k
			}
		}
		if own {
			putBuf(p)
		}
		s.kickLocked()
		return
	}
	s.recv.push(p, own)
	s.wakeRead()
	s.kickLocked()
}

// discard reads and drops n payload bytes.
func (c *h2conn) discard(n int) error {
	for n > 0 {
		k := min(n, len(c.small))
		if _, err := io.ReadFull(c.nc, c.small[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// creditLocked returns n consumed bytes to the peer's windows, sending
// WINDOW_UPDATE once half a window is consumed. A nil s credits only the
// connection.
func (c *h2conn) creditLocked(s *Stream, n int64) {
	if n <= 0 {
		return
	}
	if s != nil && !s.recvDone && s.err == nil {
		s.unacked += n
		if s.unacked >= streamWindow/2 {
			c.queueLocked(ctlFrame{typ: http2.FrameWindowUpdate, stream: s.id, val: uint32(s.unacked)})
			s.recvAvail += s.unacked
			s.unacked = 0
		}
	}
	c.unacked += n
	if c.unacked >= connWindow/2 {
		c.queueLocked(ctlFrame{typ: http2.FrameWindowUpdate, val: uint32(c.unacked)})
		c.recvAvail += c.unacked
		c.unacked = 0
	}
}

// resetLocked sends RST_STREAM(code) and forgets s, failing its operations
// with err.
func (c *h2conn) resetLocked(s *Stream, code http2.ErrCode, err error) {
	c.queueLocked(ctlFrame{typ: http2.FrameRSTStream, stream: s.id, val: uint32(code)})
	c.forgetLocked(s, err)
}

// forgetLocked removes s from the protocol's view: frames for it are
// dropped from now on. Buffered data is released and credited back.
func (c *h2conn) forgetLocked(s *Stream, err error) {
	if s.err == nil {
		s.err = err
	}
	if s.cancel != nil {
		s.cancel()
	}
	if c.streams[s.id] == s {
		delete(c.streams, s.id)
	}
	if n := s.recv.release(); n > 0 {
		c.creditLocked(nil, int64(n))
	}
	s.kickLocked()
	if s.respReady != nil && !s.gotResponse {
		s.gotResponse = true
		close(s.respReady)
	}
	s.wakeRead()
	s.wakeWrite()
	s.writeEndedLocked()
}

// releaseLocked frees s's slot; called once per stream from Stream.Close.
func (c *h2conn) releaseLocked() {
	c.active--
	if c.active == 0 && c.reserved == 0 {
		c.idleSince = time.Now()
		c.signalCtl()
	}
}

// queueLocked queues a control frame for the control writer.
func (c *h2conn) queueLocked(f ctlFrame) {
	if c.closed {
		return
	}
	c.ctl = append(c.ctl, f)
	c.signalCtl()
}

func (c *h2conn) signalCtl() {
	select {
	case c.ctlWake <- struct{}{}:
	default:
	}
}

// ctlLoop writes queued control frames and runs the connection's timers:
// keepalive PINGs, the idle timeout and the first-stream timeout.
func (c *h2conn) ctlLoop() {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		c.writeCtl()
		if d, ok := c.tick(); ok {
			t.Reset(d)
		} else {
			t.Stop()
		}
		select {
		case <-c.ctlWake:
		case <-t.C:
		case <-c.done:
			return
		}
	}
}

// writeCtl writes every queued control frame.
func (c *h2conn) writeCtl() {
	c.mu.Lock()
	empty := len(c.ctl) == 0
	c.mu.Unlock()
	if empty {
		return
	}
	// The queue is taken under wmu: frames dequeued are written before
	// anyone else holds wmu, so linger, which ends the write side under
	// wmu, never does so between a GOAWAY's dequeue and its write.
	c.writers.Add(1)
	c.wmu.Lock()
	c.mu.Lock()
	q := c.ctl
	c.ctl = nil
	c.mu.Unlock()
	for _, f := range q {
		if c.werr != nil {
			break
		}
		var err error
		switch f.typ {
		case http2.FrameSettings:
			if f.data[0] == 1 {
				c.henc.SetMaxDynamicTableSizeLimit(f.val)
			}
			err = c.fr.WriteSettingsAck()
		case http2.FrameWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.stream, f.val)
		case http2.FramePing:
			err = c.fr.WritePing(f.flags.Has(http2.FlagPingAck), f.data)
		case http2.FrameRSTStream:
			err = c.fr.WriteRSTStream(f.stream, http2.ErrCode(f.val))
		case http2.FrameData:
			err = c.fr.WriteData(f.stream, true, nil)
		case http2.FrameGoAway:
			code := http2.ErrCode(uint32(f.data[0])<<24 | uint32(f.data[1])<<16 | uint32(f.data[2])<<8 | uint32(f.data[3]))
			err = c.fr.WriteGoAway(f.val, code, nil)
		}
		if err != nil {
			c.werr = err
		}
	}
	c.unlockW()
}

// tick runs the timers and returns when it wants to run next.
func (c *h2conn) tick() (time.Duration, bool) {
	now := time.Now()
	c.mu.Lock()
	var next time.Time
	at := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	var closeErr error
	if c.active == 0 && c.reserved == 0 {
		switch {
		case c.closeOnIdle:
			closeErr = errIdle
		case c.opt.idleTimeout > 0:
			if deadline := c.idleSince.Add(c.opt.idleTimeout); !now.Before(deadline) {
				closeErr = errIdle
			} else {
				at(deadline)
			}
		}
	}
	if !c.opt.client && !c.everStream && c.opt.firstStreamTimeout > 0 {
		if deadline := c.start.Add(c.opt.firstStreamTimeout); !now.Before(deadline) {
			closeErr = errors.New("tunnel: no stream opened in time")
		} else {
			at(deadline)
		}
	}
	if c.opt.keepalive > 0 && closeErr == nil {
		if c.pingOut {
			if deadline := c.pingSent.Add(c.opt.keepaliveTimeout); !now.Before(deadline) {
				closeErr = errPingTimeout
			} else {
				at(deadline)
			}
		} else {
			last := time.Unix(0, c.lastRead.Load())
			if deadline := last.Add(c.opt.keepalive); !now.Before(deadline) {
				c.pingOut, c.pingSent = true, now
				c.pingSeq++
				var d [8]byte
				for i := range d {
					d[i] = byte(c.pingSeq >> (8 * i))
				}
				c.queueLocked(ctlFrame{typ: http2.FramePing, data: d})
				at(now.Add(c.opt.keepaliveTimeout))
			} else {
				at(deadline)
			}
		}
	}
	if closeErr == errIdle && !c.goingAway {
		c.goingAway = true
		c.queueLocked(ctlFrame{typ: http2.FrameGoAway, val: c.lastPeerID, data: codeBytes(http2.ErrCodeNo)})
	}
	c.mu.Unlock()
	if closeErr != nil {
		c.writeCtl()
		c.close(closeErr)
		return 0, false
	}
	if next.IsZero() {
		return 0, false
	}
	return max(next.Sub(now), time.Millisecond), true
}

func codeBytes(code http2.ErrCode) [8]byte {
	return [8]byte{byte(code >> 24), byte(code >> 16), byte(code >> 8), byte(code)}
}

// goAway stops new streams and closes the connection once the open ones
// are done (graceful drain).
func (c *h2conn) goAway() {
	c.mu.Lock()
	if !c.goingAway {
		c.goingAway = true
		c.queueLocked(ctlFrame{typ: http2.FrameGoAway, val: c.lastPeerID, data: codeBytes(http2.ErrCodeNo)})
	}
	c.closeOnIdle = true
	c.signalCtl()
	c.mu.Unlock()
}

// close tears the connection down: every stream fails with err.
func (c *h2conn) close(err error) {
	if err == nil {
		err = errConnClosed
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.closeErr = err
	c.goingAway = true
	for _, s := range c.streams {
		c.forgetLocked(s, fmt.Errorf("%w: %w", errConnClosed, err))
	}
	c.ctl = nil
	c.mu.Unlock()
	c.nc.Close()
	close(c.done)
}

// tryReserve promises the pool one stream slot (client).
func (c *h2conn) tryReserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	limit := min(int(c.peerMaxStream), c.opt.maxStreams)
	// Each reserved slot will take the next odd stream ID; IDs are never
	// reused (RFC 9113 §5.1.1), so a connection that has handed out its
	// last one takes no more streams.
	if c.closed || c.goingAway || c.active+c.reserved >= limit || int64(c.nextID)+2*int64(c.reserved) > maxStreamID {
		return false
	}
	c.reserved++
	return true
}

// unreserve returns a slot promised by tryReserve and not used.
func (c *h2conn) unreserve() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reserved--
	if c.active == 0 && c.reserved == 0 {
		c.idleSince = time.Now()
		c.signalCtl()
	}
}

// openStream turns a reserved slot into a stream and sends its HEADERS,
// followed in the same write by early as the stream's first DATA frame when
// the peer's flow-control windows and frame size allow; sent reports that.
func (c *h2conn) openStream(fields []hpack.HeaderField, early []byte) (s *Stream, sent bool, err error) {
	c.writers.Add(1)
	c.wmu.Lock()
	defer c.unlockW()
	c.mu.Lock()
	c.reserved--
	if c.closed || c.goingAway {
		if c.active == 0 && c.reserved == 0 {
			c.signalCtl()
		}
		c.mu.Unlock()
		return nil, false, errRefused
	}
	id := c.nextID
	c.nextID += 2
	if c.nextID > maxStreamID {
		// The last stream ID is taken: this connection closes once its
		// streams end, and the pool dials a fresh one.
		c.closeOnIdle = true
	}
	s = c.newStreamLocked(id)
	n := int64(len(early))
	sent = n > 0 && n <= s.sendWindow && n <= c.sendWindow && n <= int64(c.peerMaxFrame)
	if sent {
		s.sendWindow -= n
		c.sendWindow -= n
	}
	c.mu.Unlock()
	err = c.writeHeadersLocked(id, fields, false)
	if err == nil && sent {
		err = c.writeDataLocked(id, early)
	}
	if err != nil {
		c.mu.Lock()
		c.forgetLocked(s, err)
		c.mu.Unlock()
		return s, false, err
	}
	return s, sent, nil
}

// writeHeadersLocked encodes and writes a header block, split into
// CONTINUATION frames when the peer's frame size requires it.
func (c *h2conn) writeHeadersLocked(id uint32, fields []hpack.HeaderField, end bool) error {
	if c.werr != nil {
		return c.werr
	}
	c.hbuf.b = c.hbuf.b[:0]
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.b
	c.mu.Lock()
	maxFrame := int(c.peerMaxFrame)
	c.mu.Unlock()
	first := true
	for first || len(block) > 0 {
		frag := block[:min(len(block), maxFrame)]
		block = block[len(frag):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: end, EndHeaders: len(block) == 0})
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			c.werr = err
			return err
		}
		first = false
	}
	return nil
}

// writeHeaders writes a header block for an existing stream.
func (c *h2conn) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	c.writers.Add(1)
	c.wmu.Lock()
	defer c.unlockW()
	return c.writeHeadersLocked(id, fields, end)
}

// writeData writes one DATA frame; len(p) is within the send windows.
func (c *h2conn) writeData(id uint32, p []byte) error {
	c.writers.Add(1)
	c.wmu.Lock()
	defer c.unlockW()
	return c.writeDataLocked(id, p)
}

// writeDataLocked is writeData with the write lock held.
func (c *h2conn) writeDataLocked(id uint32, p []byte) error {
	if c.werr != nil {
		return c.werr
	}
	var h [9]byte
	h[0], h[1], h[2] = byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
	h[3] = byte(http2.FrameData)
	h[5], h[6], h[7], h[8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
	c.appendLocked(h[:])
	if len(p) >= directWrite {
		// Large payloads go out mostly as they are: what is buffered, this
		// frame's header and the payload's first bytes up to a full TLS
		// record in one write (a header alone would cost a record and a
		// system call of its own), then the rest without a copy.
		if n := min(len(p), tlsRecord-len(c.wbuf)%tlsRecord); n > 0 {
			c.appendLocked(p[:n])
			p = p[n:]
		}
		return c.flushLocked(p)
	}
	c.appendLocked(p)
	if len(c.wbuf) >= flushThreshold {
		return c.flushLocked(nil)
	}
	return nil
}

// appendLocked adds p to the output buffer, writing out first if it would
// not fit.
func (c *h2conn) appendLocked(p []byte) {
	if c.wbuf != nil && len(c.wbuf)+len(p) > cap(c.wbuf) {
		c.flushLocked(nil)
	}
	if c.wbuf == nil {
		c.wbuf = getBuf(max(len(p), 16<<10))[:0]
	}
	c.wbuf = append(c.wbuf, p...)
}

// flushLocked writes the output buffer, then tail, to the network and
// releases the buffer.
func (c *h2conn) flushLocked(tail []byte) error {
	b := c.wbuf
	c.wbuf = nil
	if c.werr == nil && len(b)+len(tail) > 0 {
		c.writeNet(b, tail)
	}
	if b != nil {
		putBuf(b)
	}
	return c.werr
}

// writeNet writes head, then tail, to the network; when they span more
// than one TLS record, the records leave in one system call. A peer that
// accepts nothing for the keepalive timeout is dead: the write fails and
// the connection closes, which also frees every writer queued behind this
// one.
func (c *h2conn) writeNet(head, tail []byte) error {
	if t := c.opt.keepaliveTimeout; t > 0 {
		// Moving a deadline wakes the runtime's network poller, which costs
		// a system call and a thread wake-up; so the deadline moves only
		// once a quarter of it is used, and a write that makes no progress
		// fails after between 3/4 and all of the timeout.
		if now := time.Now(); c.wdl.Sub(now) < t*3/4 {
			c.wdl = now.Add(t)
			c.nc.SetWriteDeadline(c.wdl)
		}
	}
	batch := c.opt.records != nil && len(head)+len(tail) > tlsRecord
	if batch {
		c.opt.records.begin()
	}
	var err error
	for _, b := range [2][]byte{head, tail} {
		if len(b) > 0 && err == nil {
			_, err = c.nc.Write(b)
		}
	}
	if batch {
		if eerr := c.opt.records.end(); err == nil {
			err = eerr
		}
	}
	if err != nil {
		c.werr = err
		c.close(fmt.Errorf("tunnel: write: %w", err))
		return err
	}
	return nil
}

// unlockW releases wmu; the last writer out flushes.
func (c *h2conn) unlockW() {
	if c.writers.Add(-1) == 0 {
		c.flushLocked(nil)
	}
	c.wmu.Unlock()
}

func headerValue(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}
