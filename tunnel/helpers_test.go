package tunnel

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
)

type tlsConfig = tls.Config

// testCA is a throw-away mesh CA minting SPIFFE leaf certificates.
// TODO: switch to certs/certstest once it exists.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"ferry test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue mints a leaf for id valid from notBefore to notAfter.
func (ca *testCA) issueAt(t testing.TB, id certs.Identity, notBefore, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(id.String())
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		URIs:         []*url.URL{u},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func (ca *testCA) issue(t testing.TB, id certs.Identity) tls.Certificate {
	return ca.issueAt(t, id, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
}

// verifyChain checks the peer chain against roots for usage.
func verifyChain(roots *x509.CertPool, cs tls.ConnectionState, usage x509.ExtKeyUsage) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no peer certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

// serverTLS returns the server side of the mesh's TLS, as certs.Store will.
func (ca *testCA) serverTLS(cert tls.Certificate, trustDomain string) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		MinVersion:   tls.VersionTLS13,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := verifyChain(ca.pool, cs, x509.ExtKeyUsageClientAuth); err != nil {
				return err
			}
			id, err := certs.PeerIdentity(cs)
			if err != nil {
				return err
			}
			if id.TrustDomain != trustDomain {
				return fmt.Errorf("client %s outside trust domain %s", id, trustDomain)
			}
			return nil
		},
	}
}

// clientTLS returns the client side: present cert, require want.
func (ca *testCA) clientTLS(cert tls.Certificate, want certs.Identity) *tls.Config {
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true, // no SNI in HBONE; verified below
		MinVersion:         tls.VersionTLS13,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := verifyChain(ca.pool, cs, x509.ExtKeyUsageServerAuth); err != nil {
				return err
			}
			if !hasIdentity(cs, want) {
				return fmt.Errorf("server does not prove %s", want)
			}
			return nil
		},
	}
}

var (
	idClient = certs.Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "client"}
	idServer = certs.Identity{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "server"}
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// env is one HBONE server on loopback plus a client pool, both using one CA.
type env struct {
	t       testing.TB
	ca      *testCA
	srv     *Server
	cli     *Client
	hbone   netip.AddrPort
	dials   atomic.Int32 // upstream dials made by the server
	tcpDial atomic.Int32 // HBONE connections dialed by the client
	cancel  context.CancelFunc
	done    chan error
}

type envOpt func(*ServerConfig, *ClientConfig)

func newEnv(t testing.TB, opts ...envOpt) *env {
	t.Helper()
	ca := newTestCA(t)
	e := &env{t: t, ca: ca, done: make(chan error, 1)}
	scfg := ServerConfig{
		TLS:          ca.serverTLS(ca.issue(t, idServer), "cluster.local"),
		Destinations: DestinationsFunc(func(a netip.Addr) bool { return a.IsLoopback() }),
		Authorizer:   AuthorizerFunc(func(context.Context, Request) error { return nil }),
		Dial: func(ctx context.Context, src, dst netip.AddrPort) (net.Conn, error) {
			e.dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
	}
	clientCert := ca.issue(t, idClient)
	ccfg := ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) {
			return ca.clientTLS(clientCert, want), nil
		},
		DialTCP: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			e.tcpDial.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, "tcp", dst.String())
		},
	}
	for _, o := range opts {
		o(&scfg, &ccfg)
	}
	srv, err := NewServer(scfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := NewClient(ccfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.srv, e.cli = srv, cli
	e.hbone = addrPort(ln.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- srv.Serve(ctx, ln) }()
	t.Cleanup(e.stop)
	return e
}

// stop closes the client and stops the server, failing on a Serve error.
func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cli.Close()
	e.cancel()
	e.cancel = nil
	if err := <-e.done; err != nil {
		e.t.Errorf("Serve: %v", err)
	}
}

func (e *env) dial(ctx context.Context, authority netip.AddrPort) (*Stream, error) {
	return e.cli.Dial(ctx, DialRequest{
		Src: idClient, Dst: idServer,
		SrcAddr:   netip.MustParseAddrPort("127.0.0.1:40000"),
		HBONEAddr: e.hbone, Authority: authority,
	})
}

// backend is a loopback TCP server running handler per connection.
type backend struct {
	ln   net.Listener
	addr netip.AddrPort
	wg   sync.WaitGroup
	mu   sync.Mutex
	conn []net.Conn
}

func newBackend(t testing.TB, handler func(c *net.TCPConn)) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, addr: addrPort(ln.Addr())}
	b.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conn = append(b.conn, c)
			b.mu.Unlock()
			b.wg.Go(func() { handler(c.(*net.TCPConn)); c.Close() })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for _, c := range b.conn {
			c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

// echo copies everything back and half-closes after the client's EOF.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
	io.Copy(io.Discard, c)
}
