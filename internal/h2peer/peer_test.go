package h2peer

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const wait = 30 * time.Second // a guard against hanging, not a timing assertion

// startServer serves net/http's HTTP/2 server (unencrypted, prior
// knowledge) on loopback and returns a Client Peer connected to it. CONNECT
// to "echo" echoes the stream; anything else is refused with 403 and an
// x-refused header, which the server's encoder adds to its dynamic table.
func startServer(t *testing.T) *Peer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Host != "echo" {
			w.Header().Set("x-refused", strings.Repeat("r", 100))
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		buf := make([]byte, 1024)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	srv := &http.Server{Handler: handler, Protocols: new(http.Protocols)}
	srv.Protocols.SetUnencryptedHTTP2(true)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-served })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	p, err := Client(c)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAgainstNetHTTP: a Peer opens, answers and carries streams against
// another implementation, keeping HPACK in step both ways.
func TestAgainstNetHTTP(t *testing.T) {
	p := startServer(t)
	settings, err := p.WaitSettings(wait)
	if err != nil {
		t.Fatal(err)
	}
	if len(settings) == 0 {
		t.Fatal("the server's SETTINGS came through empty")
	}
	// Refused streams fill the dynamic tables: our CONNECT fields, the
	// server's x-refused. The later blocks refer to them.
	for _, id := range []uint32{1, 3} {
		if err := p.Connect(id, "elsewhere", hpack.HeaderField{Name: "x-sent", Value: strings.Repeat("s", 100)}); err != nil {
			t.Fatal(err)
		}
		if st, err := p.Status(id, wait); st != http.StatusForbidden || err != nil {
			t.Fatalf("stream %d: status %d, %v; want 403", id, st, err)
		}
	}
	if blk := p.Encode(ConnectFields("elsewhere")...); len(blk) != 2 {
		t.Fatalf("block %x: the encoder does not refer to its table", blk)
	}
	if err := p.Connect(5, "echo"); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(5, wait); st != http.StatusOK || err != nil {
		t.Fatalf("CONNECT echo: status %d, %v", st, err)
	}
	// More than the server's 64 KiB windows: Next must return credit.
	msg := bytes.Repeat([]byte("0123456789abcdef"), 1024)
	for range 8 {
		if err := p.RoundTrip(5, msg, wait); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.WriteRSTStream(5, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
}

// TestWaitGoAway: an illegal frame ends the connection with GOAWAY and
// the code RFC 9113 gives, and then EOF.
func TestWaitGoAway(t *testing.T) {
	p := startServer(t)
	if err := p.WriteRawFrame(http2.FramePing, 0, 1, make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	code, err := p.WaitGoAway(wait)
	if err != nil || code != http2.ErrCodeProtocol {
		t.Fatalf("GOAWAY %v, %v; want PROTOCOL_ERROR", code, err)
	}
	if err := p.WaitClosed(wait); err != nil {
		t.Fatalf("after GOAWAY: %v, want EOF", err)
	}
}

// TestStatusReportsReset: Status reports a reset stream as a ResetError
// and the end of the connection as a GoAwayError.
func TestStatusReportsReset(t *testing.T) {
	p := startServer(t)
	// A CONNECT without :authority is malformed: the stream is reset.
	if err := p.WriteHeaders(1, false, hpack.HeaderField{Name: ":method", Value: "CONNECT"}); err != nil {
		t.Fatal(err)
	}
	var reset ResetError
	if _, err := p.Status(1, wait); !errors.As(err, &reset) || reset.Stream != 1 || reset.Code != http2.ErrCodeProtocol {
		t.Fatalf("CONNECT without :authority: %v, want RST_STREAM PROTOCOL_ERROR on stream 1", err)
	}
	// DATA on an idle stream ends the connection.
	if err := p.WriteData(7, false, []byte("x")); err != nil {
		t.Fatal(err)
	}
	var ga GoAwayError
	if _, err := p.Status(9, wait); !errors.As(err, &ga) || ga.Code != http2.ErrCodeProtocol {
		t.Fatalf("DATA on an idle stream: %v, want GOAWAY PROTOCOL_ERROR", err)
	}
}
