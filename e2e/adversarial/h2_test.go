package adversarial

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/http2"

	"github.com/ferrymesh/ferry/internal/h2peer"
)

// bigWindow is what the suite's clients advertise: a stream window the
// agent never runs out of while a test is busy elsewhere.
var bigWindow = http2.Setting{ID: http2.SettingInitialWindowSize, Val: 4 << 20}

// dialTLS opens TCP to addr, optionally from a chosen local address, and
// runs the TLS handshake with cfg.
func dialTLS(ctx context.Context, src netip.Addr, addr netip.AddrPort, cfg *tls.Config) (*tls.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	nc, err := d.DialContext(ctx, "tcp4", addr.String())
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, cfg)
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}

// dialH2 is dialTLS from src, then an HTTP/2 client with bigWindow.
func dialH2(ctx context.Context, src netip.Addr, addr netip.AddrPort, cfg *tls.Config) (*h2peer.Peer, error) {
	tc, err := dialTLS(ctx, src, addr, cfg)
	if err != nil {
		return nil, err
	}
	p, err := h2peer.Client(tc, bigWindow)
	if err != nil {
		tc.Close()
		return nil, err
	}
	return p, nil
}

// victim is a well-behaved tenant: an HBONE stream to an echo server that
// must keep working while attacks run.
type victim struct {
	p  *h2peer.Peer
	id uint32
	n  int
}

func newVictim(ctx context.Context, a *agent, echo *echoServer) (*victim, error) {
	p, err := dialH2(ctx, remotePod, a.hbone, a.peerTLS(a.leaf(fooID("remote"))))
	if err != nil {
		return nil, err
	}
	if err := p.Connect(1, echo.addr.String()); err != nil {
		p.Close()
		return nil, err
	}
	if st, err := p.Status(1, 10*time.Second); err != nil || st != 200 {
		p.Close()
		return nil, fmt.Errorf("victim CONNECT: status %d, %v", st, err)
	}
	return &victim{p: p, id: 1}, nil
}

// check sends one message through the victim's stream and waits for it.
func (v *victim) check() error {
	v.n++
	return v.p.RoundTrip(v.id, fmt.Appendf(nil, "ping %d", v.n), 10*time.Second)
}
