package tunnel

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func allowAll(Request) error { return nil }
func denyAll(Request) error  { return errors.New("policy changed: deny all") }

// dialHook is an upstream DialFunc that blocks until the test releases it,
// so that a test can change the policy while a connection is being set up.
// Once released it dials even if its context was cancelled meanwhile, as a
// dial that completed just as the policy changed would: the proxy must then
// close the upstream without writing to it.
type dialHook struct {
	entered chan struct{} // closed when the dial starts
	release chan struct{} // closed by the test to let it finish
	cause   chan error    // its context's error when released (nil: live)
}

func newDialHook() *dialHook {
	return &dialHook{entered: make(chan struct{}), release: make(chan struct{}), cause: make(chan error, 1)}
}

func (h *dialHook) dial(ctx context.Context, _, dst netip.AddrPort) (net.Conn, error) {
	close(h.entered)
	<-h.release
	h.cause <- ctx.Err()
	var d net.Dialer
	return d.DialContext(context.WithoutCancel(ctx), "tcp", dst.String())
}

// recordingBackend echoes what it reads and reports, per connection, every
// byte it received once the connection ends.
func recordingBackend(t *testing.T) (*backend, <-chan []byte) {
	got := make(chan []byte, 4)
	b := newBackend(t, func(c *net.TCPConn) {
		var seen bytes.Buffer
		io.Copy(c, io.TeeReader(c, &seen))
		c.CloseWrite()
		got <- seen.Bytes()
	})
	return b, got
}

// secret is what a client sends before its connection is set up; it must
// never reach the pod of a connection refused during setup.
const secret = "must not reach the pod"

// TestReauthorizePendingHBONE: a CONNECT authorized under the old policy
// whose upstream dial is still in progress when the policy changes is seen by
// Reauthorize. Refused, its dial is cancelled, the upstream that the dial
// returned anyway gets no byte (not even the early data the client sent with
// the CONNECT), and the client gets the 401 of a denial, counted as one.
// Still allowed, it is not disturbed.
func TestReauthorizePendingHBONE(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow func(Request) error
	}{{"refused", denyAll}, {"allowed", allowAll}} {
		t.Run(tc.name, func(t *testing.T) {
			hook := newDialHook()
			obs := &recordingObserver{}
			e := newEnv(t, func(s *ServerConfig, _ *ClientConfig) {
				s.Dial = hook.dial
				s.Observer = obs
			})
			b, got := recordingBackend(t)
			type result struct {
				st  *Stream
				err error
			}
			dialed := make(chan result, 1)
			go func() {
				st, err := e.cli.Dial(t.Context(), DialRequest{
					Src: idClient, Dst: idServer,
					SrcAddr:   netip.MustParseAddrPort("127.0.0.1:40000"),
					HBONEAddr: e.hbone, Authority: b.addr,
					Early: []byte(secret),
				})
				dialed <- result{st, err}
			}()
			<-hook.entered // authorized; the upstream dial is blocked
			if n := len(e.srv.Connections()); n != 0 {
				t.Fatalf("Connections() lists %d connections still being set up", n)
			}
			refused := e.srv.Reauthorize(tc.allow)
			close(hook.release)
			cause := <-hook.cause
			r := <-dialed
			if r.st != nil {
				defer r.st.Close()
			}

			if tc.name == "refused" {
				if refused != 1 {
					t.Fatalf("Reauthorize refused %d connections, want the pending one", refused)
				}
				if cause != context.Canceled {
					t.Fatalf("dial context: %v, want the dial cancelled by the policy change", cause)
				}
				var se *StatusError
				if !errors.As(r.err, &se) || se.Code != 401 {
					t.Fatalf("CONNECT: %v, want 401 as for a denial", r.err)
				}
				if data := <-got; len(data) != 0 {
					t.Fatalf("upstream received %q from a connection refused during setup", data)
				}
				if closed := waitClosed(t, obs, 1); closed[0] != "denied" {
					t.Fatalf("observer saw %q, want denied", closed[0])
				}
				if n := len(e.srv.Connections()); n != 0 {
					t.Fatalf("%d connections still registered", n)
				}
				return
			}
			if refused != 0 || cause != nil {
				t.Fatalf("an allowing Reauthorize refused %d, dial context: %v", refused, cause)
			}
			if r.err != nil {
				t.Fatal(r.err)
			}
			echoed := make([]byte, len(secret))
			if _, err := io.ReadFull(r.st, echoed); err != nil || string(echoed) != secret {
				t.Fatalf("early data echoed as %q, %v", echoed, err)
			}
			exchange(t, r.st, " and more")
			if conns := e.srv.Connections(); len(conns) != 1 || conns[0].Dst != b.addr {
				t.Fatalf("Connections() = %+v, want the one open connection", conns)
			}
			r.st.CloseWrite()
			if rest, err := io.ReadAll(r.st); err != nil {
				t.Fatalf("after the echo: %q, %v", rest, err)
			}
			if data := <-got; string(data) != secret+" and more" {
				t.Fatalf("upstream received %q", data)
			}
			if closed := waitClosed(t, obs, 1); closed[0] != "ok" {
				t.Fatalf("observer saw %q, want ok", closed[0])
			}
		})
	}
}

// TestReauthorizePendingPlaintext is TestReauthorizePendingHBONE for
// captured plaintext: refused during setup, the client's connection is
// closed as a denial's is, and what it had sent never reaches the pod.
func TestReauthorizePendingPlaintext(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow func(Request) error
	}{{"refused", denyAll}, {"allowed", allowAll}} {
		t.Run(tc.name, func(t *testing.T) {
			hook := newDialHook()
			obs := &recordingObserver{}
			b, got := recordingBackend(t)
			p, err := NewPlaintext(PlaintextConfig{
				Authorizer:   AuthorizerFunc(func(context.Context, Request) error { return nil }),
				Destinations: DestinationsFunc(func(a netip.Addr) bool { return a.IsLoopback() }),
				OriginalDst:  func(net.Conn) (netip.AddrPort, error) { return b.addr, nil },
				Dial:         hook.dial,
				Observer:     obs,
			}, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			addr := serveProxy(t, p.Serve)
			c, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte(secret)); err != nil {
				t.Fatal(err)
			}
			<-hook.entered // authorized; the upstream dial is blocked
			if n := len(p.Connections()); n != 0 {
				t.Fatalf("Connections() lists %d connections still being set up", n)
			}
			refused := p.Reauthorize(tc.allow)
			close(hook.release)
			cause := <-hook.cause

			if tc.name == "refused" {
				if refused != 1 {
					t.Fatalf("Reauthorize refused %d connections, want the pending one", refused)
				}
				if cause != context.Canceled {
					t.Fatalf("dial context: %v, want the dial cancelled by the policy change", cause)
				}
				// The deadline only keeps a regression from hanging the test.
				c.SetReadDeadline(time.Now().Add(time.Minute))
				if data, err := io.ReadAll(c); len(data) != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("client read %q, %v; want the connection closed", data, err)
				}
				if data := <-got; len(data) != 0 {
					t.Fatalf("upstream received %q from a connection refused during setup", data)
				}
				if closed := waitClosed(t, obs, 1); closed[0] != "denied" {
					t.Fatalf("observer saw %q, want denied", closed[0])
				}
				if n := len(p.Connections()); n != 0 {
					t.Fatalf("%d connections still registered", n)
				}
				return
			}
			if refused != 0 || cause != nil {
				t.Fatalf("an allowing Reauthorize refused %d, dial context: %v", refused, cause)
			}
			want := make([]byte, len(secret))
			if _, err := io.ReadFull(c, want); err != nil || string(want) != secret {
				t.Fatalf("echo %q, %v", want, err)
			}
			if conns := p.Connections(); len(conns) != 1 || conns[0].Dst != b.addr {
				t.Fatalf("Connections() = %+v, want the one open connection", conns)
			}
			c.(*net.TCPConn).CloseWrite()
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				t.Fatalf("after the echo: %q, %v", rest, err)
			}
			if data := <-got; string(data) != secret {
				t.Fatalf("upstream received %q", data)
			}
			if closed := waitClosed(t, obs, 1); closed[0] != "ok" {
				t.Fatalf("observer saw %q, want ok", closed[0])
			}
		})
	}
}

// TestRegistryNoEscape drives the registry as the proxies do (register,
// authorize, dial, settle) from many goroutines while the policy flips to
// deny-all and Reauthorize runs, in whatever interleaving the scheduler
// picks. Whatever the order, no connection ends up open and unaborted: each
// was either authorized under the new policy (and refused), seen by the
// scan, or both.
func TestRegistryNoEscape(t *testing.T) {
	for range 50 {
		reg := NewRegistry()
		var denied atomic.Bool // the policy the Authorizer applies
		authorize := func(Request) error {
			if denied.Load() {
				return errors.New("deny all")
			}
			return nil
		}
		const n = 32
		var (
			wg     sync.WaitGroup
			open   [n]atomic.Bool
			killed [n]atomic.Bool
		)
		for i := range n {
			wg.Go(func() {
				tr := reg.pending(ConnInfo{}, func() {})
				if authorize(Request{}) != nil {
					reg.remove(tr)
					return
				}
				if reg.settle(tr, func() { killed[i].Store(true) }) == nil {
					open[i].Store(true)
				}
			})
		}
		wg.Go(func() {
			denied.Store(true) // publish, then re-check
			reg.Reauthorize(authorize)
		})
		wg.Wait()
		for i := range n {
			if open[i].Load() && !killed[i].Load() {
				t.Fatalf("connection %d is open under a policy that denies it", i)
			}
		}
	}
}
