package certs_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

func csrPEM(t *testing.T, tmpl *x509.CertificateRequest, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestIssueLeaf(t *testing.T) {
	for _, inter := range []bool{false, true} {
		t.Run(map[bool]string{false: "root", true: "intermediate"}[inter], func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { testIssueLeaf(t, inter) })
		})
	}
}

// testIssueLeaf runs in a synctest bubble, so that validity periods can be
// checked exactly.
func testIssueLeaf(t *testing.T, inter bool) {
	var opts []certstest.Option
	if inter {
		opts = append(opts, certstest.WithIntermediate())
	}
	ca := certstest.NewCA(t, opts...)
	id := ca.Identity("default", "app")
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := certs.NewCSR(id, key)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	chain, err := ca.Issuer().Issue(t.Context(), id, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	wantLen := 2
	if inter {
		wantLen = 3
	}
	if len(chain) != wantLen {
		t.Fatalf("chain of %d, want %d", len(chain), wantLen)
	}
	leaf := chain[0]
	if !chain[len(chain)-1].Equal(ca.Root()) {
		t.Error("chain does not end with the root")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
		t.Errorf("SANs: URIs %v DNS %v IP %v email %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid {
		t.Error("leaf is a CA or lacks basic constraints")
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Errorf("key usage %b", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ext key usage %v", leaf.ExtKeyUsage)
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 || leaf.SerialNumber.BitLen() < 64 {
		t.Errorf("serial %x: want a random positive 128-bit number", leaf.SerialNumber)
	}
	if !leaf.NotBefore.Equal(before.Add(-certs.ClockSkew)) {
		t.Errorf("NotBefore %s, want %s backdated by %s", leaf.NotBefore, before, certs.ClockSkew)
	}
	if !leaf.NotAfter.Equal(before.Add(certs.DefaultCertTTL)) {
		t.Errorf("NotAfter %s, want the 24h default from %s", leaf.NotAfter, before)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("leaf is not for the CSR's key")
	}
	inters := x509.NewCertPool()
	for _, c := range chain[1 : len(chain)-1] {
		inters.AddCert(c)
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("verify for %v: %v", u, err)
		}
	}
	// Serials differ.
	chain2, err := ca.Issuer().Issue(t.Context(), id, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if chain2[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Error("two leaves with the same serial")
	}
	if d := chain2[0].NotAfter.Sub(chain2[0].NotBefore); d != time.Hour+certs.ClockSkew {
		t.Errorf("1h request: lifetime %s", d)
	}
}

func TestIssueCapsTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t, certstest.WithMaxTTL(48*time.Hour))
		id := ca.Identity("ns", "sa")
		key, _ := certs.GenerateKey()
		csr, _ := certs.NewCSR(id, key)
		chain, err := ca.Issuer().Issue(t.Context(), id, csr, 365*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if d := time.Until(chain[0].NotAfter); d != 48*time.Hour {
			t.Errorf("lifetime %s, want the 48h cap", d)
		}
	})
}

func TestIssueCancelled(t *testing.T) {
	ca := certstest.NewCA(t)
	id := ca.Identity("ns", "sa")
	key, _ := certs.GenerateKey()
	csr, _ := certs.NewCSR(id, key)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := ca.Issuer().Issue(ctx, id, csr, 0); err == nil {
		t.Fatal("Issue succeeded with a cancelled context")
	}
}

func TestIssueRejectsCSR(t *testing.T) {
	ca := certstest.NewCA(t)
	id := ca.Identity("ns", "sa")
	uri := mustURL(t, id.String())
	p256, _ := certs.GenerateKey()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)

	good := csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{uri}}, p256)
	badSig := func() []byte {
		block, _ := pem.Decode(good)
		der := append([]byte(nil), block.Bytes...)
		der[len(der)-5] ^= 0xff // inside the signature
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}()
	otherNameSAN := func() []byte {
		// A SAN extension with the SPIFFE URI and an otherName, which
		// crypto/x509 does not surface.
		uriGN := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(id.String())}
		other := asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: mustMarshal(t, asn1.ObjectIdentifier{1, 2, 3})}
		val := mustMarshal(t, []asn1.RawValue{uriGN, other})
		return csrPEM(t, &x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: val}}}, p256)
	}()

	tests := []struct {
		name string
		csr  []byte
		want string
	}{
		{"not PEM", []byte("hello"), "no PEM CERTIFICATE REQUEST"},
		{"certificate instead", ca.RootPEM(), "no PEM CERTIFICATE REQUEST"},
		{"trailing data", append(append([]byte(nil), good...), good...), "trailing data"},
		{"bad signature", badSig, "bad signature"},
		{"no SAN", csrPEM(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: id.String()}}, p256), "0 subject alternative names"},
		{"other identity", csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{mustURL(t, "spiffe://cluster.local/ns/ns/sa/admin")}}, p256), `URI SAN is "spiffe://cluster.local/ns/ns/sa/admin"`},
		{"two URIs", csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{uri, mustURL(t, "spiffe://cluster.local/ns/ns/sa/admin")}}, p256), "2 subject alternative names"},
		{"DNS SAN too", csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{uri}, DNSNames: []string{"kubernetes.default.svc"}}, p256), "2 subject alternative names"},
		{"otherName SAN too", otherNameSAN, "2 subject alternative names"},
		{"P-384", csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{uri}}, p384), "want P-256"},
		{"RSA 1024", csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{uri}}, rsa1024), "RSA key of 1024 bits"},
		{"Ed25519", csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{uri}}, ed), "want ECDSA P-256 or RSA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ca.Issuer().Issue(t.Context(), id, tt.csr, 0)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Issue: %v; want error containing %q", err, tt.want)
			}
		})
	}
	for name, csr := range map[string][]byte{
		"P-256":    good,
		"RSA 2048": csrPEM(t, &x509.CertificateRequest{URIs: []*url.URL{uri}}, rsa2048),
		"subject":  csrPEM(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}, URIs: []*url.URL{uri}}, p256),
	} {
		t.Run("accept "+name, func(t *testing.T) {
			chain, err := ca.Issuer().Issue(t.Context(), id, csr, 0)
			if err != nil {
				t.Fatal(err)
			}
			if s := chain[0].Subject.String(); s != "" {
				t.Errorf("leaf subject %q copied from the CSR", s)
			}
		})
	}
	t.Run("invalid identity", func(t *testing.T) {
		if _, err := ca.Issuer().Issue(t.Context(), certs.Identity{Namespace: "ns"}, good, 0); err == nil {
			t.Fatal("issued for an invalid identity")
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInitCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	if err := certs.InitCA(dir); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, certs.RootCertFile), filepath.Join(dir, certs.RootKeyFile)
	for file, mode := range map[string]os.FileMode{keyFile: 0o600, dir: 0o700 | os.ModeDir} {
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %s, want %s", file, fi.Mode(), mode)
		}
	}
	ca, err := certs.LoadLocalCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	root := ca.Root()
	if !root.IsCA || root.KeyUsage&x509.KeyUsageCertSign == 0 || root.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("root: CA %v, usage %b, algorithm %s", root.IsCA, root.KeyUsage, root.PublicKeyAlgorithm)
	}
	if time.Until(root.NotAfter) < 5*365*24*time.Hour {
		t.Errorf("root expires at %s", root.NotAfter)
	}

	before, _ := os.ReadFile(keyFile)
	if err := certs.InitCA(dir); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("second InitCA: %v", err)
	}
	after, _ := os.ReadFile(keyFile)
	if string(before) != string(after) {
		t.Error("second InitCA changed the key")
	}
	// Only the certificate is missing: still refuse, and write nothing.
	if err := os.Remove(certFile); err != nil {
		t.Fatal(err)
	}
	if err := certs.InitCA(dir); err == nil {
		t.Fatal("InitCA overwrote an existing key")
	}
	if _, err := os.Stat(certFile); !os.IsNotExist(err) {
		t.Errorf("InitCA wrote %s although it refused: %v", certFile, err)
	}
}

func TestLoadLocalCA(t *testing.T) {
	// An intermediate with its chain loads and issues chains to the root.
	ca := certstest.NewCA(t, certstest.WithIntermediate())
	certFile, keyFile := ca.WriteFiles(t, t.TempDir())
	local, err := certs.LoadLocalCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if len(local.Chain()) != 2 || !local.Root().Equal(ca.Root()) {
		t.Fatalf("chain of %d", len(local.Chain()))
	}
	id := ca.Identity("ns", "sa")
	key, _ := certs.GenerateKey()
	csr, _ := certs.NewCSR(id, key)
	chain, err := local.Issue(t.Context(), id, csr, 0)
	if err != nil {
		t.Fatal(err)
	}
	inters := x509.NewCertPool()
	inters.AddCert(chain[1])
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: ca.Roots(), Intermediates: inters}); err != nil {
		t.Errorf("chain does not verify to the root: %v", err)
	}

	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	certPEM, _ := os.ReadFile(certFile)
	keyPEM, _ := os.ReadFile(keyFile)
	otherCert, otherKey := certstest.NewCA(t).WriteFiles(t, t.TempDir())
	otherKeyPEM, _ := os.ReadFile(otherKey)
	otherCertPEM, _ := os.ReadFile(otherCert)
	interOnly := certs.EncodeCertificatesPEM(local.Chain()[:1])
	leafPEM := certs.EncodeCertificatesPEM(chain[:1])

	tests := []struct {
		name, cert, key, want string
	}{
		{"missing cert", filepath.Join(dir, "nope"), keyFile, "no such file"},
		{"missing key", certFile, filepath.Join(dir, "nope"), "no such file"},
		{"empty cert", write("empty.pem", nil), keyFile, "no PEM certificate"},
		{"key in cert file", write("k.pem", keyPEM), keyFile, "no PEM certificate"},
		{"no key", certFile, write("c.pem", certPEM), "no PEM private key"},
		{"mismatched key", certFile, write("ok.pem", otherKeyPEM), "does not match"},
		{"root missing", write("inter.pem", interOnly), keyFile, "not a self-signed root"},
		{"wrong order", write("rev.pem", append(append([]byte(nil), otherCertPEM...), certPEM...)), keyFile, "does not match"},
		{"leaf as CA", write("leaf.pem", leafPEM), keyFile, "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := certs.LoadLocalCA(tt.cert, tt.key)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadLocalCA: %v; want error containing %q", err, tt.want)
			}
		})
	}
}

func TestNewLocalCARejects(t *testing.T) {
	ca := certstest.NewCA(t)
	key, _ := certs.GenerateKey()
	leaf := ca.Leaf(t, ca.Identity("ns", "sa"), certstest.Key(key)).Leaf
	if _, err := certs.NewLocalCA([]*x509.Certificate{leaf, ca.Root()}, key); err == nil || !strings.Contains(err.Error(), "is not a CA") {
		t.Errorf("leaf as a CA: %v", err)
	}
	if _, err := certs.NewLocalCA(nil, key); err == nil {
		t.Error("empty chain accepted")
	}
	if _, err := certs.NewLocalCA([]*x509.Certificate{ca.Root()}, nil); err == nil {
		t.Error("nil key accepted")
	}
	// An expired CA issues nothing.
	synctest.Test(t, func(t *testing.T) {
		old, err := certs.NewRootCertificate(key, "old", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		expired, err := certs.NewLocalCA([]*x509.Certificate{old}, key)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Hour)
		id := certs.Identity{TrustDomain: "td", Namespace: "ns", ServiceAccount: "sa"}
		csr, _ := certs.NewCSR(id, key)
		if _, err := expired.Issue(t.Context(), id, csr, 0); err == nil || !strings.Contains(err.Error(), "expired at") {
			t.Errorf("expired CA: %v", err)
		}
	})
}

// TestLocalCAKeyTypes: a plugged-in CA may use P-384 or RSA; the leaves it
// signs still carry the workload's P-256 key.
func TestLocalCAKeyTypes(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa3072, _ := rsa.GenerateKey(rand.Reader, 3072)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, key := range map[string]crypto.Signer{"P-384": p384, "RSA 3072": rsa3072} {
		t.Run(name, func(t *testing.T) {
			root, err := certs.NewRootCertificate(key, name, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			ca, err := certs.NewLocalCA([]*x509.Certificate{root}, key)
			if err != nil {
				t.Fatal(err)
			}
			id := certs.Identity{TrustDomain: "td", Namespace: "ns", ServiceAccount: "sa"}
			wk, _ := certs.GenerateKey()
			csr, _ := certs.NewCSR(id, wk)
			chain, err := ca.Issue(t.Context(), id, csr, 0)
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AddCert(root)
			if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots}); err != nil {
				t.Fatal(err)
			}
		})
	}
	root, err := certs.NewRootCertificate(p224, "P-224", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certs.NewLocalCA([]*x509.Certificate{root}, p224); err == nil || !strings.Contains(err.Error(), "P-224") {
		t.Errorf("P-224 CA key: %v", err)
	}
}
