package tunnel

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// readLoop reads the connection's frames and handles each: every frame
// that arrives is handled in this file, DATA by readData and deliverLocked
// (deliver.go), the rest by handleFrame. It runs on one goroutine (run),
// never writes to the network (answers go to the control writer) and owns
// the fields below; all else it touches is the connection's, under c.mu.
type readLoop struct {
	c      *h2conn
	hdr    headerBlock
	small  [smallRead]byte  // payloads of small DATA frames, and discarded bytes
	inline sockio.TryWriter // writes to streams' sockets (deliverLocked)
}

// headerBlock is a header block being received: a HEADERS frame and its
// CONTINUATIONs.
type headerBlock struct {
	stream uint32
	end    bool // END_STREAM
	frames int
	block  []byte
}

// run dispatches frames until an error.
func (r *readLoop) run() error {
	c := r.c
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
			if err := r.readData(fh); err != nil {
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
				c.queueLocked(rstFrame(se.StreamID, se.Code))
			}
			c.mu.Unlock()
			continue
		}
		if err != nil {
			return c.readError(err)
		}
		if err := r.handleFrame(f); err != nil {
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

func (r *readLoop) handleFrame(f http2.Frame) error {
	c := r.c
	switch f := f.(type) {
	case *http2.HeadersFrame:
		if f.StreamID == 0 {
			return c.connError(http2.ErrCodeProtocol, "HEADERS on stream 0")
		}
		// The framer has already checked that header blocks are not
		// interleaved with other frames (RFC 9113 §6.10) and answers a
		// stray CONTINUATION with a connection error.
		r.hdr.stream, r.hdr.end, r.hdr.frames = f.StreamID, f.StreamEnded(), 1
		r.hdr.block = append(r.hdr.block[:0], f.HeaderBlockFragment()...)
		if len(r.hdr.block) > maxHeaderListSize {
			return c.connError(http2.ErrCodeEnhanceYourCalm, "header block too large")
		}
		if f.HeadersEnded() {
			return r.endHeaders()
		}
		return nil
	case *http2.ContinuationFrame:
		r.hdr.frames++
		r.hdr.block = append(r.hdr.block, f.HeaderBlockFragment()...)
		if r.hdr.frames > maxHeaderFrames || len(r.hdr.block) > maxHeaderListSize {
			return c.connError(http2.ErrCodeEnhanceYourCalm, "header block too large")
		}
		if f.HeadersEnded() {
			return r.endHeaders()
		}
		return nil
	case *http2.SettingsFrame:
		return r.handleSettings(f)
	case *http2.WindowUpdateFrame:
		return r.handleWindowUpdate(f)
	case *http2.PingFrame:
		c.mu.Lock()
		if f.IsAck() {
			c.pingOut = false
		} else {
			c.queueLocked(ctlFrame{typ: http2.FramePing, flag: true, ping: f.Data})
		}
		c.mu.Unlock()
		return nil
	case *http2.RSTStreamFrame:
		r.handleReset(f)
		return nil
	case *http2.GoAwayFrame:
		r.handleGoAway(f)
		return nil
	case *http2.PushPromiseFrame:
		return c.connError(http2.ErrCodeProtocol, "PUSH_PROMISE")
	default:
		// PRIORITY and unknown frame types are ignored (RFC 9113 §5.5).
		return nil
	}
}

func (r *readLoop) handleSettings(f *http2.SettingsFrame) error {
	c := r.c
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
				if !st.sendWnd.add(delta) {
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
	ack := ctlFrame{typ: http2.FrameSettings}
	if setTable {
		ack.val, ack.flag = tableSize, true
	}
	c.queueLocked(ack)
	c.mu.Unlock()
	if err != nil {
		return c.readError(err)
	}
	return nil
}

func (r *readLoop) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c := r.c
	c.mu.Lock()
	if f.StreamID == 0 {
		over := !c.sendWnd.add(int64(f.Increment))
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
		if !s.sendWnd.add(int64(f.Increment)) {
			c.resetLocked(s, http2.ErrCodeFlowControl, &StreamResetError{Code: http2.ErrCodeFlowControl})
			return nil
		}
		s.wakeWrite()
	}
	return nil
}

func (r *readLoop) handleReset(f *http2.RSTStreamFrame) {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[f.StreamID]
	if !c.opt.client && (s == nil || !s.responded) {
		// Resets of streams not yet answered (or refused) cost us work for
		// nothing: a client doing little else is abusive (CVE-2023-44487).
		c.earlyResets++
		if c.earlyResets > 200 && c.earlyResets > c.opened/2 && !c.closeOnIdle {
			c.goingAway = true
			c.queueLocked(goAwayFrame(c.lastPeerID, http2.ErrCodeEnhanceYourCalm))
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

func (r *readLoop) handleGoAway(f *http2.GoAwayFrame) {
	c := r.c
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
func (r *readLoop) endHeaders() error {
	c := r.c
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
	if _, err := c.hdec.Write(r.hdr.block); err != nil {
		return c.connError(http2.ErrCodeCompression, err.Error())
	}
	if err := c.hdec.Close(); err != nil {
		return c.connError(http2.ErrCodeCompression, err.Error())
	}
	if cap(r.hdr.block) > 4<<10 {
		r.hdr.block = nil
	}
	if tooBig {
		// Decoded in full, so HPACK's state is intact; but the peer ignored
		// our SETTINGS_MAX_HEADER_LIST_SIZE, and a peer that does so once
		// is not served further.
		return c.connError(http2.ErrCodeProtocol, "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE")
	}
	c.mu.Lock()
	code, msg := r.dispatchHeadersLocked(r.hdr.stream, r.hdr.end, fields)
	c.mu.Unlock()
	if msg != "" {
		return c.connError(code, msg)
	}
	return nil
}

// dispatchHeadersLocked hands a decoded header block to its stream, or
// opens one (server). A non-empty msg is a connection error with code.
func (r *readLoop) dispatchHeadersLocked(id uint32, end bool, fields []hpack.HeaderField) (code http2.ErrCode, msg string) {
	c := r.c
	if s := c.streams[id]; s != nil {
		return r.streamHeadersLocked(s, end, fields)
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
		c.queueLocked(rstFrame(id, http2.ErrCodeRefusedStream))
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
func (r *readLoop) streamHeadersLocked(s *Stream, end bool, fields []hpack.HeaderField) (code http2.ErrCode, msg string) {
	c := r.c
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
		s.gotResponse, s.status = true, int16(status)
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

// readData moves a DATA frame's payload straight into the stream's
// receive buffer.
func (r *readLoop) readData(fh http2.FrameHeader) error {
	c := r.c
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
	if !c.recvWnd.take(int64(fh.Length)) {
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
		if !s.recvWnd.take(int64(fh.Length)) {
			c.resetLocked(s, http2.ErrCodeFlowControl, &StreamResetError{Code: http2.ErrCodeFlowControl})
			s = nil
		}
	}
	if s == nil {
		c.creditLocked(nil, int64(fh.Length))
		c.mu.Unlock()
		return r.discard(n + pad)
	}
	// Padding counts against flow control but is never read by anyone.
	if pad > 0 || fh.Flags.Has(http2.FlagDataPadded) {
		c.creditLocked(s, int64(int(fh.Length)-n))
	}
	c.mu.Unlock()

	if n <= smallRead {
		if _, err := io.ReadFull(c.nc, r.small[:n]); err != nil {
			return err
		}
		c.mu.Lock()
		r.deliverLocked(s, r.small[:n], false)
	} else {
		for rest := n; rest > 0; {
			buf := bufpool.Get(min(rest, bufpool.MaxSize))
			k := min(rest, len(buf))
			if _, err := io.ReadFull(c.nc, buf[:k]); err != nil {
				bufpool.Put(buf)
				return err
			}
			rest -= k
			c.mu.Lock()
			r.deliverLocked(s, buf[:k], true)
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
		return r.discard(pad)
	}
	return nil
}

// discard reads and drops n payload bytes.
func (r *readLoop) discard(n int) error {
	c := r.c
	for n > 0 {
		k := min(n, len(r.small))
		if _, err := io.ReadFull(c.nc, r.small[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func headerValue(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}
