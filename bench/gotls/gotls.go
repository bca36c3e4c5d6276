package gotls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// BufferSize is the size of each direction's copy buffer.
const BufferSize = 32 << 10

// Client accepts plaintext connections and opens one TLS connection to
// Target for each.
type Client struct {
	Target string      // the Server's address
	TLS    *tls.Config // client configuration: certificate and roots
	Log    *slog.Logger
}

// Server accepts TLS connections and forwards each to Target in plaintext.
type Server struct {
	Target string      // the upstream (application) address
	TLS    *tls.Config // server configuration: certificate and client CAs
	Log    *slog.Logger
}

// Serve accepts connections on ln until ctx is done, then closes ln and
// every open connection and returns once they are gone.
func (c *Client) Serve(ctx context.Context, ln net.Listener) error {
	return serve(ctx, ln, c.Log, func(ctx context.Context, down net.Conn) (net.Conn, error) {
		d := tls.Dialer{Config: c.TLS, NetDialer: &net.Dialer{Timeout: 10 * time.Second}}
		return d.DialContext(ctx, "tcp", c.Target)
	})
}

// Serve accepts TLS connections on ln (a plain TCP listener) until ctx is
// done, then closes ln and every open connection and returns once they are
// gone.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return serve(ctx, tls.NewListener(ln, s.TLS), s.Log, func(ctx context.Context, down net.Conn) (net.Conn, error) {
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := down.(*tls.Conn).HandshakeContext(hctx); err != nil {
			return nil, err
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", s.Target)
	})
}

func serve(ctx context.Context, ln net.Listener, log *slog.Logger, dial func(context.Context, net.Conn) (net.Conn, error)) error {
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() { <-ctx.Done(); ln.Close() })
	var delay time.Duration
	for {
		down, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors: wait for connections to close, as
				// net/http does, rather than stop serving.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("gotls: accept: %w", err)
		}
		delay = 0
		wg.Go(func() {
			stop := context.AfterFunc(ctx, func() { down.Close() })
			defer stop()
			defer down.Close()
			up, err := dial(ctx, down)
			if err != nil {
				log.Debug("gotls: dial", "err", err)
				return
			}
			stopUp := context.AfterFunc(ctx, func() { up.Close() })
			defer stopUp()
			defer up.Close()
			Pipe(down, up)
		})
	}
}

type closeWriter interface{ CloseWrite() error }

// Pipe copies a to b and b to a until both directions reach EOF, passing
// each EOF on as a half-close (TCP FIN or TLS close_notify).
func Pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Go(func() { copyHalf(b, a) })
	copyHalf(a, b)
	wg.Wait()
}

func copyHalf(dst, src net.Conn) {
	buf := make([]byte, BufferSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := dst.(closeWriter); ok {
					cw.CloseWrite()
					return
				}
			}
			dst.Close()
			return
		}
	}
}

// LoadConfig returns a TLS 1.3 configuration from PEM files: certFile and
// keyFile are this side's certificate chain and key, caFile the roots that
// verify the other side. A server requires and verifies a client
// certificate; a client verifies the server's certificate for serverName.
// Key exchange is X25519, as in Ferry's agent.
func LoadConfig(certFile, keyFile, caFile, serverName string, server bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("gotls: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("gotls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("gotls: no certificate in %s", caFile)
	}
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		Certificates:     []tls.Certificate{cert},
		CurvePreferences: []tls.CurveID{tls.X25519},
	}
	if server {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = pool
		cfg.SessionTicketsDisabled = true
	} else {
		cfg.RootCAs = pool
		cfg.ServerName = serverName
	}
	return cfg, nil
}
