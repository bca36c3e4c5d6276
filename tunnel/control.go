package tunnel

import (
	"errors"
	"time"

	"golang.org/x/net/http2"
)

// The control writer (ctlLoop) is a goroutine per connection that writes
// what the read loop and Stream.Close queue (SETTINGS ACK, PING,
// WINDOW_UPDATE, RST_STREAM, GOAWAY, a closing END_STREAM) and runs the
// connection's timers: keepalive PINGs, the idle timeout and the
// first-stream timeout (tick). The read loop never writes to the network,
// so a peer that stops reading can't stall it; a peer that makes us queue
// more than maxQueuedControl frames is cut off (readLoop.run).

// ctlFrame is a frame queued for the control writer.
type ctlFrame struct {
	typ    http2.FrameType
	stream uint32
	// val is WINDOW_UPDATE's increment, GOAWAY's last stream ID, or the
	// HPACK table size a SETTINGS ack takes on when flag is set.
	val  uint32
	code http2.ErrCode // RST_STREAM, GOAWAY
	flag bool          // PING: an ACK; SETTINGS ack: val is set
	ping [8]byte
}

func rstFrame(id uint32, code http2.ErrCode) ctlFrame {
	return ctlFrame{typ: http2.FrameRSTStream, stream: id, code: code}
}

func goAwayFrame(lastStream uint32, code http2.ErrCode) ctlFrame {
	return ctlFrame{typ: http2.FrameGoAway, val: lastStream, code: code}
}

func windowUpdateFrame(id, inc uint32) ctlFrame {
	return ctlFrame{typ: http2.FrameWindowUpdate, stream: id, val: inc}
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
	c.lockW()
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
			if f.flag {
				c.henc.SetMaxDynamicTableSizeLimit(f.val)
			}
			err = c.fr.WriteSettingsAck()
		case http2.FrameWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.stream, f.val)
		case http2.FramePing:
			err = c.fr.WritePing(f.flag, f.ping)
		case http2.FrameRSTStream:
			err = c.fr.WriteRSTStream(f.stream, f.code)
		case http2.FrameData:
			err = c.fr.WriteData(f.stream, true, nil)
		case http2.FrameGoAway:
			err = c.fr.WriteGoAway(f.val, f.code, nil)
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
				c.queueLocked(ctlFrame{typ: http2.FramePing, ping: d})
				at(now.Add(c.opt.keepaliveTimeout))
			} else {
				at(deadline)
			}
		}
	}
	if closeErr == errIdle && !c.goingAway {
		c.goingAway = true
		c.queueLocked(goAwayFrame(c.lastPeerID, http2.ErrCodeNo))
	}
	c.mu.Unlock()
	if closeErr != nil {
		c.writeCtl()
		// writeCtl's GOAWAY stays buffered when a writer waits for wmu (the
		// last writer out flushes): it goes out before the close, or the
		// peer sees the connection end without it.
		c.wmu.Lock()
		c.flushLocked(nil)
		c.wmu.Unlock()
		c.close(closeErr)
		return 0, false
	}
	if next.IsZero() {
		return 0, false
	}
	return max(next.Sub(now), time.Millisecond), true
}
