package certstest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
)

// CA is an in-memory certificate authority: a root and, optionally, an
// intermediate that signs the leaves. It is safe for concurrent use.
type CA struct {
	trustDomain string
	root        *certs.LocalCA
	rootKey     crypto.Signer
	signer      *certs.LocalCA // root, or the intermediate
	signerKey   crypto.Signer
}

// Option configures NewCA.
type Option func(*options)

type options struct {
	trustDomain  string
	intermediate bool
	maxTTL       time.Duration
}

// WithIntermediate makes the CA sign leaves with an intermediate CA, so that
// chains are leaf → intermediate → root.
func WithIntermediate() Option { return func(o *options) { o.intermediate = true } }

// WithTrustDomain sets the CA's trust domain (default cluster.local), used by
// Identity and Store.
func WithTrustDomain(td string) Option { return func(o *options) { o.trustDomain = td } }

// WithMaxTTL caps the lifetime of the certificates the CA's Issuer grants.
func WithMaxTTL(d time.Duration) Option { return func(o *options) { o.maxTTL = d } }

// NewCA returns a new CA with a fresh ECDSA P-256 root.
func NewCA(t testing.TB, opts ...Option) *CA {
	t.Helper()
	o := options{trustDomain: certs.DefaultTrustDomain, maxTTL: certs.DefaultMaxCertTTL}
	for _, f := range opts {
		f(&o)
	}
	rootKey := mustKey(t)
	rootCert, err := certs.NewRootCertificate(rootKey, "certstest root "+rand.Text()[:8], 10*365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	root, err := certs.NewLocalCA([]*x509.Certificate{rootCert}, rootKey, certs.WithMaxTTL(o.maxTTL))
	if err != nil {
		t.Fatal(err)
	}
	ca := &CA{trustDomain: o.trustDomain, root: root, rootKey: rootKey, signer: root, signerKey: rootKey}
	if o.intermediate {
		key := mustKey(t)
		inter, err := root.NewIntermediate(key, "certstest intermediate", 5*365*24*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		ca.signer, ca.signerKey = inter, key
	}
	return ca
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() string { return ca.trustDomain }

// Identity returns the identity of service account sa in namespace ns, in the
// CA's trust domain.
func (ca *CA) Identity(ns, sa string) certs.Identity {
	return certs.Identity{TrustDomain: ca.trustDomain, Namespace: ns, ServiceAccount: sa}
}

// Root returns the CA's root certificate.
func (ca *CA) Root() *x509.Certificate { return ca.root.Root() }

// Roots returns a new pool holding the CA's root.
func (ca *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.root.Root())
	return p
}

// RootPEM returns the CA's root in PEM.
func (ca *CA) RootPEM() []byte {
	return certs.EncodeCertificatesPEM([]*x509.Certificate{ca.root.Root()})
}

// Issuer returns the certs.LocalCA that signs the CA's leaves (the
// intermediate if there is one).
func (ca *CA) Issuer() *certs.LocalCA { return ca.signer }

// WriteFiles writes the signing CA's chain (signing certificate first, root
// last) and key as PEM files in dir, in the form LoadLocalCA reads.
func (ca *CA) WriteFiles(t testing.TB, dir string) (certFile, keyFile string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(ca.signerKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "ca-cert.pem"), filepath.Join(dir, "ca-key.pem")
	if err := os.WriteFile(certFile, certs.EncodeCertificatesPEM(ca.signer.Chain()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// StoreConfig returns a certs.StoreConfig for the CA's trust domain and root.
func (ca *CA) StoreConfig() certs.StoreConfig {
	return certs.StoreConfig{TrustDomain: ca.trustDomain, Roots: ca.Roots()}
}

// Store returns a running certs.Store, issuing from the CA, that already holds
// a valid certificate for each of ids. It stops when the test ends.
func (ca *CA) Store(t testing.TB, ids ...certs.Identity) *certs.Store {
	t.Helper()
	return ca.StoreWith(t, ca.StoreConfig(), ca.Issuer(), ids...)
}

// StoreWith is Store with an explicit configuration and issuer (for example
// one that fails on demand). It waits for ids to be ready only while issuer
// succeeds: callers that need otherwise pass no ids and call SetIdentities.
func (ca *CA) StoreWith(t testing.TB, cfg certs.StoreConfig, issuer certs.Issuer, ids ...certs.Identity) *certs.Store {
	t.Helper()
	s, err := certs.NewStore(cfg, issuer, Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("certs.Store.Run: %v", err)
		}
	})
	if len(ids) > 0 {
		s.SetIdentities(ids)
		wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
		defer wcancel()
		for _, id := range ids {
			if err := s.WaitReady(wctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	return s
}

// LeafOption changes a certificate minted by Leaf.
type LeafOption func(*leafOptions)

type leafOptions struct {
	tmpl           *x509.Certificate
	key            crypto.Signer
	nonCAInterm    bool
	noIntermediate bool
}

// Validity sets the leaf's validity period.
func Validity(notBefore, notAfter time.Time) LeafOption {
	return func(o *leafOptions) { o.tmpl.NotBefore, o.tmpl.NotAfter = notBefore, notAfter }
}

// Expired makes a leaf that expired an hour ago.
func Expired() LeafOption {
	return func(o *leafOptions) {
		now := time.Now()
		o.tmpl.NotBefore, o.tmpl.NotAfter = now.Add(-2*time.Hour), now.Add(-time.Hour)
	}
}

// NotYetValid makes a leaf valid from an hour from now.
func NotYetValid() LeafOption {
	return func(o *leafOptions) {
		now := time.Now()
		o.tmpl.NotBefore, o.tmpl.NotAfter = now.Add(time.Hour), now.Add(2*time.Hour)
	}
}

// URIs replaces the leaf's URI SANs (none with no arguments). Each is parsed
// with url.Parse.
func URIs(uris ...string) LeafOption {
	return func(o *leafOptions) {
		o.tmpl.URIs = nil
		for _, s := range uris {
			u, err := url.Parse(s)
			if err != nil {
				panic("certstest: " + err.Error())
			}
			o.tmpl.URIs = append(o.tmpl.URIs, u)
		}
	}
}

// URL appends u, as is, to the leaf's URI SANs: for URIs that url.Parse
// would not produce.
func URL(u *url.URL) LeafOption {
	return func(o *leafOptions) { o.tmpl.URIs = append(o.tmpl.URIs, u) }
}

// NoSAN removes every subject alternative name.
func NoSAN() LeafOption { return URIs() }

// DNSNames sets DNS SANs.
func DNSNames(names ...string) LeafOption { return func(o *leafOptions) { o.tmpl.DNSNames = names } }

// ExtKeyUsage replaces the leaf's extended key usages (default server and
// client authentication).
func ExtKeyUsage(u ...x509.ExtKeyUsage) LeafOption {
	return func(o *leafOptions) { o.tmpl.ExtKeyUsage = u }
}

// LeafIsCA marks the leaf itself as a CA.
func LeafIsCA() LeafOption {
	return func(o *leafOptions) {
		o.tmpl.IsCA = true
		o.tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
}

// NonCAIntermediate signs the leaf with an extra "intermediate" that is not a
// CA (basic constraints CA:FALSE), itself signed by the CA, and puts it in
// the chain.
func NonCAIntermediate() LeafOption { return func(o *leafOptions) { o.nonCAInterm = true } }

// WithoutIntermediates leaves the CA's intermediate out of the chain.
func WithoutIntermediates() LeafOption { return func(o *leafOptions) { o.noIntermediate = true } }

// Key sets the leaf's key (default a new P-256 key).
func Key(k crypto.Signer) LeafOption { return func(o *leafOptions) { o.key = k } }

// Leaf mints a certificate for id, valid for an hour around now, signed by
// the CA (through its intermediate if any, which the chain includes). Options
// make it invalid in the ways the mTLS checks must catch.
func (ca *CA) Leaf(t testing.TB, id certs.Identity, opts ...LeafOption) tls.Certificate {
	t.Helper()
	now := time.Now()
	o := leafOptions{tmpl: &x509.Certificate{
		SerialNumber:          serial(t),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}}
	if !id.IsZero() {
		URIs(id.String())(&o)
	}
	for _, f := range opts {
		f(&o)
	}
	if o.key == nil {
		o.key = mustKey(t)
	}
	parent, parentKey := ca.signer.Chain()[0], ca.signerKey
	var chain [][]byte
	if o.nonCAInterm {
		k := mustKey(t)
		tmpl := &x509.Certificate{
			SerialNumber:          serial(t),
			Subject:               pkix.Name{CommonName: "certstest non-CA intermediate"},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
			IsCA:                  false,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, k.Public(), parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, der)
		parent, parentKey = c, k
	}
	der, err := x509.CreateCertificate(rand.Reader, o.tmpl, parent, o.key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	out := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: o.key, Leaf: leaf}
	out.Certificate = append(out.Certificate, chain...)
	if !o.noIntermediate {
		for _, c := range ca.signer.Chain() {
			if c == ca.root.Root() {
				break
			}
			out.Certificate = append(out.Certificate, c.Raw)
		}
	}
	return out
}

// PeerConfig returns a TLS 1.3, ALPN h2 configuration that presents cert and
// accepts any peer certificate: a misbehaving client or server for negative
// tests. As a server it requires a client certificate.
func PeerConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{certs.ALPN},
		Certificates:       []tls.Certificate{cert},
		InsecureSkipVerify: true,
		ClientAuth:         tls.RequireAnyClientCert,
	}
}

// Result is the outcome of Handshake, one side each.
type Result struct {
	Client, Server       tls.ConnectionState
	ClientErr, ServerErr error
}

// Handshake runs a TLS handshake between client and server over net.Pipe and
// returns both sides' states and errors. It works inside a synctest bubble.
func Handshake(t testing.TB, client, server *tls.Config) Result {
	t.Helper()
	cc, sc := net.Pipe()
	defer cc.Close()
	defer sc.Close()
	c, s := tls.Client(cc, client), tls.Server(sc, server)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var r Result
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.ServerErr = s.HandshakeContext(ctx)
		if r.ServerErr != nil {
			sc.Close() // unblock the client
		}
		r.Server = s.ConnectionState()
	}()
	r.ClientErr = c.HandshakeContext(ctx)
	r.Client = c.ConnectionState()
	if r.ClientErr != nil {
		cc.Close()
	} else {
		// A TLS 1.3 client finishes before the server has checked its
		// certificate; drain what the server still sends (an alert, session
		// tickets), since net.Pipe does not buffer.
		go io.Copy(io.Discard, cc)
	}
	<-done
	return r
}

// Logger returns a slog.Logger that writes to t.Log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func mustKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// CSR returns a PEM certificate request for id with a fresh key, as an
// agent sends its CA.
func CSR(t testing.TB, id certs.Identity) []byte {
	t.Helper()
	key, err := certs.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := certs.NewCSR(id, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}
