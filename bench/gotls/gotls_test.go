package gotls

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writePKI writes a CA and one leaf for "localhost" (server and client
// auth) into dir and returns the file paths.
func writePKI(t *testing.T, dir string) (cert, key, ca string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), DNSNames: []string{"localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, leafKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("leaf.pem", "CERTIFICATE", leafDER), write("key.pem", "PRIVATE KEY", keyDER), write("ca.pem", "CERTIFICATE", caDER)
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// TestPair carries bytes both ways through a client/server pair and passes
// each direction's EOF on as a half-close.
func TestPair(t *testing.T) {
	cert, key, ca := writePKI(t, t.TempDir())
	srvCfg, err := LoadConfig(cert, key, ca, "", true)
	if err != nil {
		t.Fatal(err)
	}
	cliCfg, err := LoadConfig(cert, key, ca, "localhost", false)
	if err != nil {
		t.Fatal(err)
	}
	// Upstream: reads everything, then answers "got:" and what it read, so
	// it answers only once the client's EOF has come through.
	app := listen(t)
	defer app.Close()
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(append([]byte("got:"), b...))
			}()
		}
	}()
	log := slog.New(slog.DiscardHandler)
	srvLn, cliLn := listen(t), listen(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 2)
	go func() { done <- (&Server{Target: app.Addr().String(), TLS: srvCfg, Log: log}).Serve(ctx, srvLn) }()
	go func() { done <- (&Client{Target: srvLn.Addr().String(), TLS: cliCfg, Log: log}).Serve(ctx, cliLn) }()

	c, err := net.Dial("tcp", cliLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	payload := bytes.Repeat([]byte("x"), 3*BufferSize+7)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := append([]byte("got:"), payload...); !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d", len(got), len(want))
	}
	c.Close()

	// An untrusted client is refused by the server: no bytes reach the app.
	bad := cliCfg.Clone()
	bad.Certificates = nil
	badLn := listen(t)
	go func() { done <- (&Client{Target: srvLn.Addr().String(), TLS: bad, Log: log}).Serve(ctx, badLn) }()
	c2, err := net.Dial("tcp", badLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2.SetDeadline(time.Now().Add(10 * time.Second))
	c2.Write([]byte("hello"))
	c2.(*net.TCPConn).CloseWrite()
	if b, _ := io.ReadAll(c2); len(b) != 0 {
		t.Fatalf("client without a certificate got %q", b)
	}
	c2.Close()

	cancel()
	for range 3 {
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
}
