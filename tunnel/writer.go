package tunnel

import (
	"fmt"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/tunnel/internal/bufpool"
)

// The write path. There is no writer goroutine: whoever has a frame to send
// (Stream.Write, CloseWrite, openStream, the control writer) appends it to
// one pooled output buffer under wmu, and the last writer out flushes
// (unlockW: writers counts the goroutines holding or waiting for wmu). So
// frames queued together leave in one TLS write and a frame costs no
// goroutine wake-up, where a writer goroutine (grpc-go's loopy writer)
// costs one per burst; the two have not been measured side by side.
// Payloads of directWrite and more skip
// the buffer, and the TLS records of a large write are gathered into one
// system call (sockio.Batcher). A peer that accepts nothing for the
// keepalive timeout fails the write, which closes the connection and frees
// every writer queued behind it (writeNet).

// fifoLock is a mutex that hands itself to waiters in arrival order (a
// channel's queued senders are served first come, first served), so a bulk
// writer can't barge ahead of a small one again and again.
type fifoLock chan struct{}

func (l fifoLock) Lock() { l <- struct{}{} }

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
	c.lockW()
	defer c.unlockW()
	return c.writeHeadersLocked(id, fields, end)
}

// writeData writes one DATA frame; len(p) is within the send windows.
func (c *h2conn) writeData(id uint32, p []byte) error {
	c.lockW()
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
		c.wbuf = bufpool.Get(max(len(p), 16<<10))[:0]
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
		bufpool.Put(b)
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
		c.opt.records.Begin()
	}
	var err error
	for _, b := range [2][]byte{head, tail} {
		if len(b) > 0 && err == nil {
			_, err = c.nc.Write(b)
		}
	}
	if batch {
		if eerr := c.opt.records.End(); err == nil {
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

// lockW takes wmu as a writer; the last writer out flushes (unlockW).
func (c *h2conn) lockW() {
	c.writers.Add(1)
	c.mu.assertNotHeld()
	c.wmu.Lock()
}
