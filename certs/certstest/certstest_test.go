package certstest_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

// TestLeafOptions checks that each option mints what it promises, so that
// negative tests elsewhere fail for the reason they claim.
func TestLeafOptions(t *testing.T) {
	ca := certstest.NewCA(t, certstest.WithIntermediate(), certstest.WithTrustDomain("example.org"))
	id := ca.Identity("ns", "sa")
	if id.TrustDomain != "example.org" || ca.TrustDomain() != "example.org" {
		t.Fatalf("trust domain %q", id.TrustDomain)
	}
	now := time.Now()
	parse := func(der []byte) *x509.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	good := ca.Leaf(t, id)
	if len(good.Certificate) != 2 || !parse(good.Certificate[1]).IsCA {
		t.Errorf("default chain: %d certificates", len(good.Certificate))
	}
	inters := x509.NewCertPool()
	inters.AddCert(parse(good.Certificate[1]))
	if _, err := good.Leaf.Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters}); err != nil {
		t.Errorf("default leaf does not verify: %v", err)
	}
	if got, err := certs.PeerIdentity(stateOf(good.Leaf)); err != nil || got != id {
		t.Errorf("default leaf identity %v, %v", got, err)
	}
	if c := ca.Leaf(t, id, certstest.Expired()).Leaf; !c.NotAfter.Before(now) {
		t.Error("Expired leaf is valid now")
	}
	if c := ca.Leaf(t, id, certstest.NotYetValid()).Leaf; !c.NotBefore.After(now) {
		t.Error("NotYetValid leaf is valid now")
	}
	if c := ca.Leaf(t, id, certstest.NoSAN()).Leaf; len(c.URIs)+len(c.DNSNames) != 0 {
		t.Error("NoSAN leaf has SANs")
	}
	if c := ca.Leaf(t, id, certstest.URIs(id.String(), id.String())).Leaf; len(c.URIs) != 2 {
		t.Error("URIs did not set two SANs")
	}
	if c := ca.Leaf(t, id, certstest.LeafIsCA()).Leaf; !c.IsCA {
		t.Error("LeafIsCA leaf is not a CA")
	}
	nonCA := ca.Leaf(t, id, certstest.NonCAIntermediate())
	if len(nonCA.Certificate) != 3 || parse(nonCA.Certificate[1]).IsCA {
		t.Error("NonCAIntermediate: no non-CA certificate after the leaf")
	}
	if c := ca.Leaf(t, id, certstest.WithoutIntermediates()); len(c.Certificate) != 1 {
		t.Error("WithoutIntermediates kept the intermediate")
	}
	key, _ := certs.GenerateKey()
	if c := ca.Leaf(t, id, certstest.Key(key)).Leaf; !key.PublicKey.Equal(c.PublicKey) {
		t.Error("Key not used")
	}

	other := certstest.NewCA(t)
	if _, err := other.Leaf(t, id).Leaf.Verify(x509.VerifyOptions{Roots: ca.Roots()}); err == nil {
		t.Error("another CA's leaf verifies to this CA's root")
	}
}

func TestStoreAndFiles(t *testing.T) {
	ca := certstest.NewCA(t)
	a, b := ca.Identity("ns", "a"), ca.Identity("ns", "b")
	s := ca.Store(t, a, b)
	if !s.Ready(a) || !s.Ready(b) {
		t.Fatal("Store not ready")
	}
	r := certstest.Handshake(t, s.ClientConfig(a, b), s.ServerConfig(func(_ netip.Addr) (certs.Identity, error) { return b, nil }))
	if r.ClientErr != nil || r.ServerErr != nil {
		t.Fatalf("handshake: %v, %v", r.ClientErr, r.ServerErr)
	}

	dir := t.TempDir()
	certFile, keyFile := ca.WriteFiles(t, dir)
	local, err := certs.LoadLocalCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !local.Root().Equal(ca.Root()) {
		t.Error("written CA has another root")
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, %v", fi, err)
	}
	if string(ca.RootPEM()) != string(certs.EncodeCertificatesPEM([]*x509.Certificate{ca.Root()})) {
		t.Error("RootPEM")
	}
}

func stateOf(c *x509.Certificate) tls.ConnectionState {
	return tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
}
