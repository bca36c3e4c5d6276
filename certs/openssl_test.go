package certs_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// openssl returns the path of the openssl binary, or skips the test.
func openssl(t *testing.T) string {
	t.Helper()
	testutil.System(t)
	p, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	return p
}

func writePEM(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOpenSSLVerifiesIssuedChain has OpenSSL, in strict RFC 5280 mode, check
// the chains the LocalCA issues, for both TLS purposes: a second, independent
// X.509 implementation agreeing with crypto/x509.
func TestOpenSSLVerifiesIssuedChain(t *testing.T) {
	bin := openssl(t)
	ca := certstest.NewCA(t, certstest.WithIntermediate())
	id := ca.Identity("default", "app")
	key, _ := certs.GenerateKey()
	csr, _ := certs.NewCSR(id, key)
	chain, err := ca.Issuer().Issue(t.Context(), id, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	root := writePEM(t, dir, "root.pem", certs.EncodeCertificatesPEM(chain[2:]))
	inter := writePEM(t, dir, "inter.pem", certs.EncodeCertificatesPEM(chain[1:2]))
	leaf := writePEM(t, dir, "leaf.pem", certs.EncodeCertificatesPEM(chain[:1]))
	for _, purpose := range []string{"sslclient", "sslserver"} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		out, err := exec.CommandContext(ctx, bin, "verify", "-x509_strict", "-purpose", purpose,
			"-CAfile", root, "-untrusted", inter, leaf).CombinedOutput()
		cancel()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl verify -purpose %s: %v\n%s", purpose, err, out)
		}
	}
	// And it rejects a chain from another root.
	other := writePEM(t, dir, "other.pem", certstest.NewCA(t).RootPEM())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bin, "verify", "-CAfile", other, "-untrusted", inter, leaf).CombinedOutput(); err == nil {
		t.Errorf("openssl verified against another root:\n%s", out)
	}
}

// TestOpenSSLClient connects OpenSSL's s_client, with a workload certificate,
// to the Store's HBONE server configuration on loopback.
func TestOpenSSLClient(t *testing.T) {
	bin := openssl(t)
	ca := certstest.NewCA(t)
	server, client := ca.Identity("ns", "server"), ca.Identity("ns", "client")
	store := ca.Store(t, server)
	dir := t.TempDir()
	leaf := ca.Leaf(t, client)
	keyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile := writePEM(t, dir, "client.pem", certs.EncodeCertificatesPEM([]*x509.Certificate{leaf.Leaf}))
	keyFile := writePEM(t, dir, "client-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	rootFile := writePEM(t, dir, "root.pem", ca.RootPEM())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		peer certs.Identity
		cs   tls.ConnectionState
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		tc := tls.Server(c, store.ServerConfig(fixed(server)))
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		tc.Write([]byte("hello from ferry\n"))
		id, err := certs.PeerIdentity(tc.ConnectionState())
		done <- result{id, tc.ConnectionState(), err}
	}()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "s_client", "-connect", ln.Addr().String(), "-tls1_3", "-alpn", "h2",
		"-cert", certFile, "-key", keyFile, "-CAfile", rootFile, "-verify_return_error", "-noservername", "-quiet")
	cmd.Stdin = bytes.NewReader(nil)
	out, err := cmd.CombinedOutput()
	r := <-done
	if r.err != nil {
		t.Fatalf("server: %v\nopenssl: %v\n%s", r.err, err, out)
	}
	if r.peer != client {
		t.Errorf("server saw %v, want %v", r.peer, client)
	}
	if r.cs.NegotiatedProtocol != "h2" || r.cs.Version != tls.VersionTLS13 {
		t.Errorf("ALPN %q, version %x", r.cs.NegotiatedProtocol, r.cs.Version)
	}
	if !strings.Contains(string(out), "hello from ferry") {
		t.Errorf("openssl did not verify the server and read its data: %v\n%s", err, out)
	}
}
