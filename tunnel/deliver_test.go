package tunnel

import (
	"errors"
	"testing"

	"github.com/ferrymesh/ferry/tunnel/internal/sockio"
)

// TestDeliveryRules is the table of deliver.go's rules 1, 4 and 5: what
// becomes of a received chunk, and when a drain goroutine starts, for every
// state a stream can be in.
func TestDeliveryRules(t *testing.T) {
	conn, _ := tcpPair(t)
	sink, ok := sockio.SinkOf(conn)
	if !ok {
		t.Skip("no non-blocking socket writes on this platform")
	}
	failed := errors.New("failed")
	type state struct {
		forwarded, draining, queued, sinkFailed, streamFailed, closed, ended bool
	}
	for _, tc := range []struct {
		name  string
		st    state
		n     int
		want  delivery
		drain bool // a drain goroutine starts after the chunk is handled
	}{
		{"read by Read", state{}, 100, deliverQueue, false},
		{"forwarded, idle", state{forwarded: true}, 100, deliverInline, false},
		{"forwarded, largest inline chunk", state{forwarded: true}, maxInline, deliverInline, false},
		{"forwarded, bulk chunk", state{forwarded: true}, maxInline + 1, deliverQueue, true},
		{"forwarded, bytes queued", state{forwarded: true, queued: true}, 100, deliverQueue, true},
		{"forwarded, drain running", state{forwarded: true, draining: true}, 100, deliverQueue, false},
		{"forwarded, socket write failed", state{forwarded: true, sinkFailed: true}, 100, deliverQueue, true},
		{"forwarded, stream ended", state{forwarded: true, ended: true}, 100, deliverInline, true},
		{"stream failed", state{forwarded: true, streamFailed: true}, 100, deliverDrop, true},
		{"closed locally", state{closed: true}, 100, deliverDrop, false},
	} {
		s := &Stream{}
		if tc.st.forwarded {
			s.fwd.sink, s.fwd.to = sink, &pair{}
		}
		s.fwd.draining = tc.st.draining
		if tc.st.queued {
			s.recv.push(make([]byte, 10), false)
		}
		if tc.st.sinkFailed {
			s.fwd.err = failed
		}
		if tc.st.streamFailed {
			s.err = failed
		}
		s.closedLocal, s.recvDone = tc.st.closed, tc.st.ended
		if got := s.deliveryLocked(tc.n); got != tc.want {
			t.Errorf("%s: a %d-byte chunk is %v, want %v", tc.name, tc.n, got, tc.want)
		}
		if tc.want == deliverQueue {
			s.recv.push(make([]byte, 1), false)
		}
		if got := s.needsDrainLocked(); got != tc.drain {
			t.Errorf("%s: a drain goroutine starts: %v, want %v", tc.name, got, tc.drain)
		}
		s.recv.release()
	}
}
