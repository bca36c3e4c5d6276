package tunnel

import "testing"

// TestSendWindow: credit is spent and given back; a SETTINGS change may
// take a window below zero, which leaves nothing available until updates
// bring it back; a window past 2^31-1 is a flow-control error.
func TestSendWindow(t *testing.T) {
	w := sendWindow{initialWindow}
	if got := w.available(); got != initialWindow {
		t.Fatalf("available = %d, want %d", got, initialWindow)
	}
	w.take(initialWindow - 10)
	if !w.add(-100) { // SETTINGS_INITIAL_WINDOW_SIZE lowered by 100
		t.Fatal("lowering the window reported an overflow")
	}
	if got := w.available(); got != 0 {
		t.Fatalf("available at a window of %d = %d, want 0", w.n, got)
	}
	if !w.add(200) || w.available() != 110 {
		t.Fatalf("after an update of 200: available %d, want 110", w.available())
	}
	if !w.add(maxWindow - 110) {
		t.Fatal("a window of exactly 2^31-1 reported an overflow")
	}
	if w.add(1) {
		t.Fatal("a window of 2^31 was accepted")
	}
}

// TestRecvWindow: the peer may send the advertised window and no more;
// consumed bytes go back in one WINDOW_UPDATE once half the window is
// consumed, and the returned credit lets the peer send that much again.
func TestRecvWindow(t *testing.T) {
	w := newRecvWindow(100)
	if !w.take(100) {
		t.Fatal("a peer sending the whole window was refused")
	}
	if w.take(1) {
		t.Fatal("a peer sending past the window was accepted")
	}
	w = newRecvWindow(100)
	w.take(100)
	steps := []struct {
		consumed int64
		update   uint32
	}{{10, 0}, {39, 0}, {1, 50}, {49, 0}, {1, 50}}
	for i, s := range steps {
		if got := w.consumed(s.consumed); got != s.update {
			t.Fatalf("step %d: consumed(%d) sent an update of %d, want %d", i, s.consumed, got, s.update)
		}
	}
	if !w.take(100) || w.take(1) {
		t.Fatalf("after 100 bytes returned the peer may send exactly 100 (avail %d)", w.avail)
	}
}
