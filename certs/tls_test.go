package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

// fixed returns an identityFor that always answers id.
func fixed(id certs.Identity) func(netip.Addr) (certs.Identity, error) {
	return func(netip.Addr) (certs.Identity, error) { return id, nil }
}

func TestHandshakeMutual(t *testing.T) {
	for _, inter := range []bool{false, true} {
		name := "root"
		var opts []certstest.Option
		if inter {
			name = "intermediate"
			opts = append(opts, certstest.WithIntermediate())
		}
		t.Run(name, func(t *testing.T) {
			ca := certstest.NewCA(t, opts...)
			a, b := ca.Identity("ns-a", "sa-a"), ca.Identity("ns-b", "sa-b")
			clientStore, serverStore := ca.Store(t, a), ca.Store(t, b)
			r := certstest.Handshake(t, clientStore.ClientConfig(a, b), serverStore.ServerConfig(fixed(b)))
			if r.ClientErr != nil || r.ServerErr != nil {
				t.Fatalf("handshake: client %v, server %v", r.ClientErr, r.ServerErr)
			}
			if got, err := certs.PeerIdentity(r.Server); err != nil || got != a {
				t.Errorf("server sees %v, %v; want %v", got, err, a)
			}
			if got, err := certs.PeerIdentity(r.Client); err != nil || got != b {
				t.Errorf("client sees %v, %v; want %v", got, err, b)
			}
			for _, cs := range []tls.ConnectionState{r.Client, r.Server} {
				if cs.Version != tls.VersionTLS13 || cs.NegotiatedProtocol != "h2" || cs.DidResume {
					t.Errorf("version %x, ALPN %q, resumed %v", cs.Version, cs.NegotiatedProtocol, cs.DidResume)
				}
				switch cs.CipherSuite {
				case tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384:
				default:
					t.Errorf("cipher suite %s, want AES-GCM", tls.CipherSuiteName(cs.CipherSuite))
				}
				if cs.CurveID != tls.X25519 {
					t.Errorf("key exchange %s, want X25519", cs.CurveID)
				}
				if cs.ServerName != "" {
					t.Errorf("SNI %q sent", cs.ServerName)
				}
			}
			// Intermediates are sent, the root is not.
			wantLen := 1
			if inter {
				wantLen = 2
			}
			if n := len(r.Server.PeerCertificates); n != wantLen {
				t.Errorf("client sent %d certificates, want %d", n, wantLen)
			}
		})
	}
}

func TestHandshakePostQuantum(t *testing.T) {
	ca := certstest.NewCA(t)
	a, b := ca.Identity("ns", "a"), ca.Identity("ns", "b")
	cfg := ca.StoreConfig()
	cfg.PostQuantum = true
	s := ca.StoreWith(t, cfg, ca.Issuer(), a, b)
	r := certstest.Handshake(t, s.ClientConfig(a, b), s.ServerConfig(fixed(b)))
	if r.ClientErr != nil || r.ServerErr != nil {
		t.Fatalf("handshake: client %v, server %v", r.ClientErr, r.ServerErr)
	}
	if r.Client.CurveID != tls.X25519MLKEM768 {
		t.Errorf("key exchange %s, want X25519MLKEM768", r.Client.CurveID)
	}
}

// TestServerRejects covers every client certificate the HBONE server must
// refuse during the handshake, as ztunnel does (a foreign trust domain;
// expired, not yet valid, untrusted or malformed certificates).
func TestServerRejects(t *testing.T) {
	ca := certstest.NewCA(t, certstest.WithIntermediate())
	other := certstest.NewCA(t)
	server := ca.Identity("ns", "server")
	client := ca.Identity("ns", "client")
	store := ca.Store(t, server)
	nul := &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/a\x00/sa/b"}

	tests := []struct {
		name string
		cert tls.Certificate
		want string
	}{
		{"wrong trust domain", ca.Leaf(t, certs.Identity{TrustDomain: "clusterset.local", Namespace: "default", ServiceAccount: "my-app"}),
			`wrong trust domain "clusterset.local", want "cluster.local"`},
		{"expired", ca.Leaf(t, client, certstest.Expired()), "certificate expired at"},
		{"not yet valid", ca.Leaf(t, client, certstest.NotYetValid()), "not valid before"},
		{"untrusted root", other.Leaf(t, client), "untrusted root"},
		{"missing intermediate", ca.Leaf(t, client, certstest.WithoutIntermediates()), "untrusted root"},
		{"no SAN", ca.Leaf(t, client, certstest.NoSAN()), "no SPIFFE identity"},
		{"DNS SAN only", ca.Leaf(t, client, certstest.NoSAN(), certstest.DNSNames("client.ns.svc")), "no SPIFFE identity"},
		{"https URI SAN", ca.Leaf(t, client, certstest.URIs("https://cluster.local/ns/ns/sa/client")), "is not SPIFFE"},
		{"two SPIFFE SANs", ca.Leaf(t, client, certstest.URIs(client.String(), "spiffe://cluster.local/ns/ns/sa/admin")), "2 SPIFFE URI SANs"},
		{"SPIFFE and https SANs", ca.Leaf(t, client, certstest.URIs(client.String(), "https://example.com")), "2 URI SANs"},
		{"NUL in SAN", ca.Leaf(t, client, certstest.NoSAN(), certstest.URL(nul)), `invalid namespace "a\x00"`},
		{"non-canonical SAN", ca.Leaf(t, client, certstest.URIs("spiffe://cluster.local/ns/ns/sa/client?x")), "not a canonical SPIFFE ID"},
		{"non-CA intermediate", ca.Leaf(t, client, certstest.NonCAIntermediate()), "is not a CA"},
		{"leaf is a CA", ca.Leaf(t, client, certstest.LeafIsCA()), "leaf certificate is a CA"},
		{"server-only key usage", ca.Leaf(t, client, certstest.ExtKeyUsage(x509.ExtKeyUsageServerAuth)), "incompatible key usage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := certstest.Handshake(t, certstest.PeerConfig(tt.cert), store.ServerConfig(fixed(server)))
			if r.ServerErr == nil {
				t.Fatal("server accepted the client certificate")
			}
			if !strings.Contains(r.ServerErr.Error(), tt.want) {
				t.Errorf("server error %q, want it to contain %q", r.ServerErr, tt.want)
			}
			if r.ClientErr == nil {
				// TLS 1.3 clients finish before the server has checked them;
				// the first read must then fail.
				t.Log("client handshake completed before the server refused it (TLS 1.3)")
			}
		})
	}

	t.Run("no client certificate", func(t *testing.T) {
		cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, InsecureSkipVerify: true}
		r := certstest.Handshake(t, cfg, store.ServerConfig(fixed(server)))
		if r.ServerErr == nil {
			t.Fatal("server accepted a client without a certificate")
		}
	})
	t.Run("no ALPN", func(t *testing.T) {
		cfg := certstest.PeerConfig(ca.Leaf(t, client))
		cfg.NextProtos = nil
		r := certstest.Handshake(t, cfg, store.ServerConfig(fixed(server)))
		if r.ServerErr == nil || !strings.Contains(r.ServerErr.Error(), "ALPN") {
			t.Fatalf("server error %v, want an ALPN error", r.ServerErr)
		}
	})
	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := certstest.PeerConfig(ca.Leaf(t, client))
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		r := certstest.Handshake(t, cfg, store.ServerConfig(fixed(server)))
		if r.ServerErr == nil {
			t.Fatal("server accepted TLS 1.2")
		}
	})
	t.Run("valid control", func(t *testing.T) {
		r := certstest.Handshake(t, certstest.PeerConfig(ca.Leaf(t, client)), store.ServerConfig(fixed(server)))
		if r.ServerErr != nil || r.ClientErr != nil {
			t.Fatalf("client %v, server %v", r.ClientErr, r.ServerErr)
		}
	})
}

// TestClientRejects covers every server certificate the HBONE client must
// refuse, including a valid certificate for the wrong identity.
func TestClientRejects(t *testing.T) {
	ca := certstest.NewCA(t)
	other := certstest.NewCA(t)
	client, want := ca.Identity("ns", "client"), ca.Identity("ns", "server")
	store := ca.Store(t, client)

	tests := []struct {
		name string
		cert tls.Certificate
		want string
	}{
		{"identity mismatch", ca.Leaf(t, ca.Identity("ns", "impostor")), "server identity is spiffe://cluster.local/ns/ns/sa/impostor, want spiffe://cluster.local/ns/ns/sa/server"},
		{"other trust domain", ca.Leaf(t, certs.Identity{TrustDomain: "evil.local", Namespace: "ns", ServiceAccount: "server"}), "server identity is spiffe://evil.local"},
		{"expired", ca.Leaf(t, want, certstest.Expired()), "certificate expired at"},
		{"not yet valid", ca.Leaf(t, want, certstest.NotYetValid()), "not valid before"},
		{"untrusted root", other.Leaf(t, want), "untrusted root"},
		{"no SAN", ca.Leaf(t, want, certstest.NoSAN()), "no SPIFFE identity"},
		{"two SPIFFE SANs", ca.Leaf(t, want, certstest.URIs(want.String(), ca.Identity("ns", "x").String())), "2 SPIFFE URI SANs"},
		{"non-CA intermediate", ca.Leaf(t, want, certstest.NonCAIntermediate()), "is not a CA"},
		{"client-only key usage", ca.Leaf(t, want, certstest.ExtKeyUsage(x509.ExtKeyUsageClientAuth)), "incompatible key usage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := certstest.Handshake(t, store.ClientConfig(client, want), certstest.PeerConfig(tt.cert))
			if r.ClientErr == nil {
				t.Fatal("client accepted the server certificate")
			}
			if !strings.Contains(r.ClientErr.Error(), tt.want) {
				t.Errorf("client error %q, want it to contain %q", r.ClientErr, tt.want)
			}
			if r.ServerErr == nil {
				t.Error("server handshake succeeded although the client refused")
			}
		})
	}
	t.Run("no expected identity", func(t *testing.T) {
		r := certstest.Handshake(t, store.ClientConfig(client, certs.Identity{}), certstest.PeerConfig(ca.Leaf(t, want)))
		if r.ClientErr == nil {
			t.Fatal("client accepted a server with no expected identity")
		}
	})
	t.Run("source identity not local", func(t *testing.T) {
		r := certstest.Handshake(t, store.ClientConfig(ca.Identity("ns", "stranger"), want), certstest.PeerConfig(ca.Leaf(t, want)))
		if r.ClientErr == nil || !errors.Is(r.ClientErr, certs.ErrNoCertificate) {
			t.Fatalf("client error %v, want ErrNoCertificate", r.ClientErr)
		}
	})
}

func TestServerIdentityByLocalAddress(t *testing.T) {
	ca := certstest.NewCA(t)
	a, b := ca.Identity("ns", "a"), ca.Identity("ns", "b")
	client := ca.Identity("ns", "client")
	store := ca.Store(t, a, b, client)
	byAddr := map[netip.Addr]certs.Identity{
		netip.MustParseAddr("127.0.0.1"): a,
		netip.MustParseAddr("::1"):       b,
	}
	serverCfg := store.ServerConfig(func(local netip.Addr) (certs.Identity, error) {
		id, ok := byAddr[local]
		if !ok {
			return certs.Identity{}, errors.New("not a local pod")
		}
		return id, nil
	})
	for addr, want := range byAddr {
		t.Run(addr.String(), func(t *testing.T) {
			ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
			if err != nil {
				t.Skipf("listen on %s: %v", addr, err)
			}
			defer ln.Close()
			type result struct {
				peer certs.Identity
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
				tc := tls.Server(c, serverCfg)
				if err := tc.Handshake(); err != nil {
					done <- result{err: err}
					return
				}
				id, err := certs.PeerIdentity(tc.ConnectionState())
				done <- result{id, err}
			}()
			d := tls.Dialer{Config: store.ClientConfig(client, want)}
			c, err := d.DialContext(t.Context(), "tcp", ln.Addr().String())
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			defer c.Close()
			if got, _ := certs.PeerIdentity(c.(*tls.Conn).ConnectionState()); got != want {
				t.Errorf("server presented %v, want %v", got, want)
			}
			r := <-done
			if r.err != nil || r.peer != client {
				t.Errorf("server saw %v, %v; want %v", r.peer, r.err, client)
			}
		})
	}
	t.Run("unknown address", func(t *testing.T) {
		r := certstest.Handshake(t, store.ClientConfig(client, a), serverCfg) // net.Pipe: zero address
		if r.ServerErr == nil || !strings.Contains(r.ServerErr.Error(), "not a local pod") {
			t.Fatalf("server error %v, want identityFor's error", r.ServerErr)
		}
	})
	t.Run("identity without certificate", func(t *testing.T) {
		r := certstest.Handshake(t, store.ClientConfig(client, a), store.ServerConfig(fixed(ca.Identity("ns", "gone"))))
		if r.ServerErr == nil || !errors.Is(r.ServerErr, certs.ErrNoCertificate) {
			t.Fatalf("server error %v, want ErrNoCertificate", r.ServerErr)
		}
	})
}

func TestVerifyPeer(t *testing.T) {
	ca := certstest.NewCA(t, certstest.WithIntermediate())
	id := ca.Identity("ns", "sa")
	state := func(c tls.Certificate) tls.ConnectionState { return connState(t, c) }
	good := state(ca.Leaf(t, id))
	now := time.Now()
	if got, err := certs.VerifyPeer(good, ca.Roots(), "cluster.local", now); err != nil || got != id {
		t.Fatalf("VerifyPeer = %v, %v", got, err)
	}
	if got, err := certs.VerifyPeer(good, ca.Roots(), "", now); err != nil || got != id {
		t.Fatalf("VerifyPeer with any trust domain = %v, %v", got, err)
	}
	for name, tc := range map[string]struct {
		cs    tls.ConnectionState
		roots *x509.CertPool
		td    string
		now   time.Time
		want  string
	}{
		"no certificate":  {tls.ConnectionState{}, ca.Roots(), "cluster.local", now, "no certificate"},
		"no roots":        {good, nil, "cluster.local", now, "no trusted roots"},
		"other domain":    {good, ca.Roots(), "example.org", now, `wrong trust domain "cluster.local", want "example.org"`},
		"later":           {good, ca.Roots(), "cluster.local", now.Add(2 * time.Hour), "expired at"},
		"earlier":         {good, ca.Roots(), "cluster.local", now.Add(-2 * time.Hour), "not valid before"},
		"server-only EKU": {state(ca.Leaf(t, id, certstest.ExtKeyUsage(x509.ExtKeyUsageCodeSigning))), ca.Roots(), "", now, "incompatible key usage"},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := certs.VerifyPeer(tc.cs, tc.roots, tc.td, tc.now)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("VerifyPeer = %v, %v; want error containing %q", got, err, tc.want)
			}
			if !got.IsZero() {
				t.Errorf("identity %v returned with an error", got)
			}
		})
	}
}

// TestVerifiedChainCache: a client presenting the same certificates again
// is answered from the Store's cache, but never past the chain's validity,
// after a root rotation, or for another trust domain's Store.
func TestVerifiedChainCache(t *testing.T) {
	ca := certstest.NewCA(t, certstest.WithIntermediate())
	server, client := ca.Identity("ns", "server"), ca.Identity("ns", "client")
	s := ca.Store(t, server)
	cs := connState(t, ca.Leaf(t, client))
	now := time.Now()
	for range 3 {
		if got, err := s.VerifyClient(cs, now); err != nil || got != client {
			t.Fatalf("VerifyClient = %v, %v", got, err)
		}
	}
	if n := s.CachedPeers(); n != 1 {
		t.Fatalf("%d chains cached after three checks of one, want 1", n)
	}
	// What the cache holds is what is answered.
	marked := ca.Identity("ns", "from-cache")
	s.SetCachedIdentity(marked)
	if got, err := s.VerifyClient(cs, now); err != nil || got != marked {
		t.Fatalf("VerifyClient = %v, %v; want the cached %v", got, err, marked)
	}
	s.SetCachedIdentity(client)
	if _, err := s.VerifyClient(cs, now.Add(2*time.Hour)); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Errorf("cached chain after its expiry: %v", err)
	}
	if _, err := s.VerifyClient(cs, now.Add(-2*time.Hour)); err == nil || !strings.Contains(err.Error(), "not valid before") {
		t.Errorf("cached chain before its validity: %v", err)
	}
	// A CA certificate the peer sends but the chain does not need still
	// bounds the cached answer: a fresh check rejects it once it expires.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	extra, err := certs.NewRootCertificate(key, "extra", 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	withExtra := cs
	withExtra.PeerCertificates = append(slices.Clip(cs.PeerCertificates), extra)
	if _, err := s.VerifyClient(withExtra, now); err != nil {
		t.Fatalf("chain with an extra CA certificate: %v", err)
	}
	if _, err := s.VerifyClient(withExtra, now.Add(45*time.Minute)); err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Errorf("cached chain after an extra certificate expired: %v", err)
	}
	forged := connState(t, certstest.NewCA(t).Leaf(t, client))
	if _, err := s.VerifyClient(forged, now); err == nil || !strings.Contains(err.Error(), "untrusted root") {
		t.Errorf("same identity from another CA: %v", err)
	}
	if err := s.SetRoots(certstest.NewCA(t).Roots()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.VerifyClient(cs, now); err == nil || !strings.Contains(err.Error(), "untrusted root") {
		t.Errorf("cached chain after its root was dropped: %v", err)
	}
	other := certstest.NewCA(t, certstest.WithTrustDomain("example.org"))
	both := other.Roots()
	both.AddCert(ca.Root())
	s2 := other.StoreWith(t, certs.StoreConfig{TrustDomain: "example.org", Roots: both}, other.Issuer(), other.Identity("ns", "server"))
	if _, err := s2.VerifyClient(cs, now); err == nil || !strings.Contains(err.Error(), "wrong trust domain") {
		t.Errorf("chain of another trust domain: %v", err)
	}
}

// connState returns the connection state of a peer presenting c.
func connState(t *testing.T, c tls.Certificate) tls.ConnectionState {
	t.Helper()
	var cs tls.ConnectionState
	for _, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		cs.PeerCertificates = append(cs.PeerCertificates, x)
	}
	return cs
}

// TestRootRotation moves a Store to a new root while both roots are
// trusted, then drops the old one.
func TestRootRotation(t *testing.T) {
	oldCA, newCA := certstest.NewCA(t), certstest.NewCA(t)
	server, client := oldCA.Identity("ns", "server"), oldCA.Identity("ns", "client")
	s := oldCA.Store(t, server)
	handshake := func(ca *certstest.CA) error {
		r := certstest.Handshake(t, certstest.PeerConfig(ca.Leaf(t, client)), s.ServerConfig(fixed(server)))
		return r.ServerErr
	}
	if err := handshake(newCA); err == nil {
		t.Fatal("new root trusted before rotation")
	}
	both := oldCA.Roots()
	both.AddCert(newCA.Root())
	if err := s.SetRoots(both); err != nil {
		t.Fatal(err)
	}
	if err := handshake(oldCA); err != nil {
		t.Errorf("old root during rotation: %v", err)
	}
	if err := handshake(newCA); err != nil {
		t.Errorf("new root during rotation: %v", err)
	}
	if err := s.SetRoots(newCA.Roots()); err != nil {
		t.Fatal(err)
	}
	if err := handshake(oldCA); err == nil || !strings.Contains(err.Error(), "untrusted root") {
		t.Errorf("old root after rotation: %v", err)
	}
	if err := s.SetRoots(nil); err == nil {
		t.Error("SetRoots(nil) accepted")
	}
}

// TestRotationWithoutRestart: one tls.Config, built once, presents the
// renewed certificate after rotation, on both sides.
func TestRotationWithoutRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t)
		a, b := ca.Identity("ns", "a"), ca.Identity("ns", "b")
		s := ca.Store(t, a, b)
		client, server := s.ClientConfig(a, b), s.ServerConfig(fixed(b))
		serials := func() (string, string) {
			r := certstest.Handshake(t, client, server)
			if r.ClientErr != nil || r.ServerErr != nil {
				t.Fatalf("handshake: %v, %v", r.ClientErr, r.ServerErr)
			}
			return r.Server.PeerCertificates[0].SerialNumber.Text(16), r.Client.PeerCertificates[0].SerialNumber.Text(16)
		}
		c1, s1 := serials()
		time.Sleep(13 * time.Hour) // past half life
		synctest.Wait()
		c2, s2 := serials()
		if c1 == c2 || s1 == s2 {
			t.Errorf("client serial %s → %s, server serial %s → %s: not rotated", c1, c2, s1, s2)
		}
	})
}

// TestHandshakeWaitsForFirstCertificate: a handshake for a local identity
// whose first certificate is being issued waits for it (a new pod's first
// connection), on either side; it gives up after a bound; one for an
// identity the store does not hold fails at once.
func TestHandshakeWaitsForFirstCertificate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t)
		a, b, stranger := ca.Identity("ns", "a"), ca.Identity("ns", "b"), ca.Identity("ns", "stranger")
		g := &gateIssuer{next: ca.Issuer(), release: make(chan struct{})}
		clients, servers := ca.StoreWith(t, ca.StoreConfig(), g), ca.Store(t, b)
		clients.SetIdentities([]certs.Identity{a})
		synctest.Wait()

		start := time.Now()
		done := make(chan certstest.Result)
		go func() { done <- certstest.Handshake(t, clients.ClientConfig(a, b), servers.ServerConfig(fixed(b))) }()
		time.Sleep(time.Second)
		close(g.release)
		r := <-done
		if r.ClientErr != nil || r.ServerErr != nil || time.Since(start) != time.Second {
			t.Fatalf("client handshake while issuing: client %v, server %v after %v; want success once issued (1s)", r.ClientErr, r.ServerErr, time.Since(start))
		}

		start = time.Now()
		r = certstest.Handshake(t, clients.ClientConfig(stranger, b), servers.ServerConfig(fixed(b)))
		if r.ClientErr == nil || time.Since(start) != 0 {
			t.Errorf("identity not held: client %v after %v; want a refusal at once", r.ClientErr, time.Since(start))
		}

		// A server identity still issuing: the wait is bounded.
		stuck := &gateIssuer{next: ca.Issuer(), release: make(chan struct{})}
		slow := ca.StoreWith(t, ca.StoreConfig(), stuck)
		slow.SetIdentities([]certs.Identity{b})
		start = time.Now()
		r = certstest.Handshake(t, ca.Store(t, a).ClientConfig(a, b), slow.ServerConfig(fixed(b)))
		if r.ServerErr == nil || time.Since(start) != 5*time.Second {
			t.Errorf("server identity never issued: server %v after %v; want a refusal after 5s", r.ServerErr, time.Since(start))
		}
		close(stuck.release)
	})
}
