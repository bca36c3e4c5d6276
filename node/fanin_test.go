package node

import (
	"errors"
	"log/slog"
	"net"
	"testing"
)

// TestFanIn takes connections from two listeners through one, lets one
// listener leave without touching the other, and ends on Close.
func TestFanIn(t *testing.T) {
	f := newFanIn("test", &net.TCPAddr{}, slog.New(slog.DiscardHandler))
	a, b := listenLocal(t), listenLocal(t)
	f.add(a)
	f.add(b)
	for _, ln := range []net.Listener{a, b} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := f.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if got.LocalAddr().String() != ln.Addr().String() {
			t.Errorf("accepted on %v, want %v", got.LocalAddr(), ln.Addr())
		}
		got.Close()
	}
	a.Close() // a pod leaves
	c, err := net.Dial("tcp", b.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := f.Accept(); err != nil {
		t.Fatalf("after one listener closed: %v", err)
	} else {
		got.Close()
	}
	f.Close()
	if _, err := f.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	b.Close()
	f.wait()
}

func listenLocal(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}
