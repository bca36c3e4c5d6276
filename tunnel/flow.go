package tunnel

// Flow control (RFC 9113 §5.2, §6.9): each direction of each stream, and of
// the whole connection, has a window. All fields are guarded by the
// connection's mu.

// maxWindow is the largest flow-control window RFC 9113 §6.9.1 allows.
const maxWindow = 1<<31 - 1

// sendWindow is the credit the peer has granted us to send DATA: taken by
// Stream.Write and openStream's early data, given by WINDOW_UPDATE and
// moved either way by a change of SETTINGS_INITIAL_WINDOW_SIZE (streams
// only), so it may go negative.
type sendWindow struct{ n int64 }

// available is how much may be sent now.
func (w *sendWindow) available() int64 { return max(w.n, 0) }

// take spends n bytes of credit; n is at most available().
func (w *sendWindow) take(n int64) { w.n -= n }

// add applies a WINDOW_UPDATE increment or a SETTINGS delta. It reports
// false when the window would exceed maxWindow, a flow-control error.
func (w *sendWindow) add(n int64) bool {
	w.n += n
	return w.n <= maxWindow
}

// recvWindow is what the peer may still send us and what we have consumed
// but not yet returned. A window is returned with WINDOW_UPDATE once half
// of it is consumed: fewer, larger updates, as ztunnel and x/net do.
type recvWindow struct {
	size    int64 // the window we advertised
	avail   int64 // what the peer may still send
	unacked int64 // consumed, not yet returned
}

func newRecvWindow(size int64) recvWindow { return recvWindow{size: size, avail: size} }

// take records n bytes received; false when the peer exceeded the window.
func (w *recvWindow) take(n int64) bool {
	w.avail -= n
	return w.avail >= 0
}

// consumed records n bytes read or dropped and returns the WINDOW_UPDATE
// increment to send now, or 0.
func (w *recvWindow) consumed(n int64) uint32 {
	w.unacked += n
	if w.unacked < w.size/2 {
		return 0
	}
	inc := w.unacked
	w.avail += inc
	w.unacked = 0
	return uint32(inc)
}

// creditLocked returns n consumed bytes to the peer's windows, sending
// WINDOW_UPDATE once half a window is consumed. A nil s credits only the
// connection.
func (c *h2conn) creditLocked(s *Stream, n int64) {
	if n <= 0 {
		return
	}
	if s != nil && !s.recvDone && s.err == nil {
		if inc := s.recvWnd.consumed(n); inc > 0 {
			c.queueLocked(windowUpdateFrame(s.id, inc))
		}
	}
	if inc := c.recvWnd.consumed(n); inc > 0 {
		c.queueLocked(windowUpdateFrame(0, inc))
	}
}
