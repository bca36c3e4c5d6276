package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/bench/gotls"
)

// TestServeHandshakes checks the plain TLS server of the handshake
// benchmark against the benchmark's client configuration: a full mutual
// handshake on X25519 with ALPN h2, then an empty SETTINGS frame for the
// HTTP/2 preface; and that it refuses a client without a certificate.
func TestServeHandshakes(t *testing.T) {
	pk, err := newPKI(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := gotls.LoadConfig(pk.cert, pk.key, pk.caCert, "", true)
	if err != nil {
		t.Fatal(err)
	}
	srv.NextProtos = []string{"h2"}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- serveHandshakes(ctx, ln, srv) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	cert, err := tls.LoadX509KeyPair(pk.cert, pk.key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
		CurvePreferences: []tls.CurveID{tls.X25519}, InsecureSkipVerify: true, SessionTicketsDisabled: true,
	}
	c, err := tls.Dial("tcp4", ln.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if st := c.ConnectionState(); st.CurveID != tls.X25519 || st.NegotiatedProtocol != "h2" || st.DidResume {
		t.Errorf("curve %v, ALPN %q, resumed %v", st.CurveID, st.NegotiatedProtocol, st.DidResume)
	}
	if _, err := c.Write(h2Preface); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(h2Settings))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, h2Settings) {
		t.Errorf("first frame %x, %v; want %x", got, err, h2Settings)
	}

	anon := cfg.Clone()
	anon.Certificates = nil
	a, err := tls.Dial("tcp4", ln.Addr().String(), anon)
	if err == nil {
		a.SetDeadline(time.Now().Add(10 * time.Second))
		a.Write(h2Preface)
		_, err = a.Read(got)
		a.Close()
	}
	if err == nil {
		t.Error("a client without a certificate got an answer")
	}
}
