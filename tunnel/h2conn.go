package tunnel

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// HTTP/2 parameters, as ztunnel sets them (its src/proxy/h2 settings).
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
	records *sockio.Batcher
}

// h2conn is one HTTP/2 connection carrying CONNECT streams, client or server
// side. Its read loop (readloop.go) and control writer (control.go) run in
// run; stream data is written by the goroutine calling Stream.Write
// (writer.go).
//
// Two locks guard it. wmu serializes writing to the network: the framer's
// output, the HPACK encoder, the output buffer. mu guards the protocol's
// state: streams, windows, the control queue. Lock order: wmu before mu. A
// goroutine may take mu while it holds wmu, never the reverse, since the
// holder of wmu may wait on the network for as long as the keepalive
// timeout while the read loop needs mu for every frame. lockW asserts the
// order when checkLocks is on (every test of this package).
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

	mu            connMutex
	streams       map[uint32]*Stream // open in the protocol sense
	ctl           []ctlFrame
	nextID        uint32 // next client stream ID
	lastPeerID    uint32 // highest stream ID the peer opened
	sendWnd       sendWindow
	recvWnd       recvWindow
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
		sendWnd:       sendWindow{initialWindow},
		recvWnd:       newRecvWindow(connWindow),
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
	err := (&readLoop{c: c}).run()
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
	c.queueLocked(goAwayFrame(c.lastPeerID, code))
	c.mu.Unlock()
	return err
}

// newStreamLocked registers a stream holding one slot.
func (c *h2conn) newStreamLocked(id uint32) *Stream {
	s := &Stream{
		c:       c,
		id:      id,
		sendWnd: sendWindow{c.peerInitWnd},
		recvWnd: newRecvWindow(streamWindow),
	}
	if c.opt.client {
		s.respReady = make(chan struct{})
	}
	c.streams[id] = s
	c.active++
	c.everStream = true
	return s
}

// resetLocked sends RST_STREAM(code) and forgets s, failing its operations
// with err.
func (c *h2conn) resetLocked(s *Stream, code http2.ErrCode, err error) {
	c.queueLocked(rstFrame(s.id, code))
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

// goAway stops new streams and closes the connection once the open ones
// are done (graceful drain).
func (c *h2conn) goAway() {
	c.mu.Lock()
	if !c.goingAway {
		c.goingAway = true
		c.queueLocked(goAwayFrame(c.lastPeerID, http2.ErrCodeNo))
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
	c.lockW()
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
	sent = n > 0 && n <= s.sendWnd.available() && n <= c.sendWnd.available() && n <= int64(c.peerMaxFrame)
	if sent {
		s.sendWnd.take(n)
		c.sendWnd.take(n)
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
