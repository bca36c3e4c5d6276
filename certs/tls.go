package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// ALPN is the only application protocol HBONE speaks.
const ALPN = "h2"

// VerifyPeer checks the certificates a TLS peer presented, as HBONE requires,
// and returns the peer's identity:
//   - the chain verifies to roots at now, for server or client authentication;
//   - every certificate after the leaf is a CA, and the leaf is not;
//   - the leaf has exactly one URI SAN, a canonical SPIFFE ID;
//   - that ID is in trustDomain (any trust domain if trustDomain is "").
//
// The error says what is wrong. It does not look at cs.VerifiedChains, so it
// works with tls.RequireAnyClientCert and InsecureSkipVerify configurations,
// which leave verification to it. The Store's TLS configurations call it with
// the exact usage each side needs.
func VerifyPeer(cs tls.ConnectionState, roots *x509.CertPool, trustDomain string, now time.Time) (Identity, error) {
	id, _, err := verifyPeer(cs.PeerCertificates, roots, trustDomain, now, x509.ExtKeyUsageAny)
	return id, err
}

// verifyPeer is VerifyPeer for one extended key usage (ExtKeyUsageAny means
// server or client authentication); it also returns the window in which
// the verified chain stays valid.
func verifyPeer(chain []*x509.Certificate, roots *x509.CertPool, trustDomain string, now time.Time, usage x509.ExtKeyUsage) (Identity, validity, error) {
	if len(chain) == 0 {
		return Identity{}, validity{}, errors.New("certs: peer presented no certificate")
	}
	leaf := chain[0]
	id, err := leafIdentity(leaf)
	if errors.Is(err, ErrNoPeerIdentity) {
		return Identity{}, validity{}, err
	}
	if err != nil {
		return Identity{}, validity{}, fmt.Errorf("certs: peer certificate (serial %s): %w", serialHex(leaf), err)
	}
	if trustDomain != "" && id.TrustDomain != trustDomain {
		return Identity{}, validity{}, fmt.Errorf("certs: peer %s: wrong trust domain %q, want %q", id, id.TrustDomain, trustDomain)
	}
	v, err := verifyChain(leaf, chain[1:], roots, now, usage)
	if err != nil {
		return Identity{}, validity{}, fmt.Errorf("certs: peer %s: %w", id, err)
	}
	return id, v, nil
}

// LeafIdentity returns the identity a workload certificate carries. The
// certificate must not be a CA and must have exactly one URI SAN, a
// canonical SPIFFE ID; otherwise the error says what is wrong, and wraps
// ErrNoPeerIdentity if there is no SPIFFE ID at all. It checks nothing else:
// not the signature, the chain or the validity period.
func LeafIdentity(leaf *x509.Certificate) (Identity, error) {
	id, err := leafIdentity(leaf)
	if err != nil && !errors.Is(err, ErrNoPeerIdentity) {
		return Identity{}, fmt.Errorf("certs: %w", err)
	}
	return id, err
}

// leafIdentity is LeafIdentity with errors not prefixed by the package name.
func leafIdentity(leaf *x509.Certificate) (Identity, error) {
	if leaf.IsCA {
		return Identity{}, errors.New("leaf certificate is a CA")
	}
	switch n := len(leaf.URIs); {
	case n == 0:
		return Identity{}, ErrNoPeerIdentity
	case n > 1:
		spiffe := 0
		for _, u := range leaf.URIs {
			if u.Scheme == "spiffe" {
				spiffe++
			}
		}
		if spiffe > 1 {
			return Identity{}, fmt.Errorf("certificate has %d SPIFFE URI SANs, want exactly one", spiffe)
		}
		return Identity{}, fmt.Errorf("certificate has %d URI SANs, want exactly one SPIFFE ID", n)
	}
	u := leaf.URIs[0]
	if u.Scheme != "spiffe" {
		return Identity{}, fmt.Errorf("%w: URI SAN %q is not SPIFFE", ErrNoPeerIdentity, u.Redacted())
	}
	return identityFromURI(u)
}

// validity is the time window in which a verified chain stays valid: the
// latest NotBefore and the earliest NotAfter of its certificates.
type validity struct{ notBefore, notAfter time.Time }

func (v validity) contains(t time.Time) bool { return !t.Before(v.notBefore) && !t.After(v.notAfter) }

// verifyChain checks that leaf, with the given intermediates, chains to roots
// at now for usage, naming the first problem found. It returns the window
// in which all of that stays true: every certificate presented, and the
// chain found, root included, is valid.
func verifyChain(leaf *x509.Certificate, intermediates []*x509.Certificate, roots *x509.CertPool, now time.Time, usage x509.ExtKeyUsage) (validity, error) {
	if roots == nil {
		return validity{}, errors.New("no trusted roots configured")
	}
	if err := checkValidity(leaf, now); err != nil {
		return validity{}, err
	}
	pool := x509.NewCertPool()
	for i, c := range intermediates {
		if !c.BasicConstraintsValid || !c.IsCA {
			return validity{}, fmt.Errorf("chain certificate %d (%q) is not a CA", i+1, c.Subject)
		}
		if err := checkValidity(c, now); err != nil {
			return validity{}, fmt.Errorf("chain certificate %d (%q): %w", i+1, c.Subject, err)
		}
		pool.AddCert(c)
	}
	usages := []x509.ExtKeyUsage{usage}
	if usage == x509.ExtKeyUsageAny {
		usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: pool, CurrentTime: now, KeyUsages: usages})
	var unknown x509.UnknownAuthorityError
	switch {
	case err == nil:
	case errors.As(err, &unknown):
		return validity{}, fmt.Errorf("certificate signed by an untrusted root (issuer %q): %w", leaf.Issuer, err)
	default:
		return validity{}, fmt.Errorf("certificate chain does not verify: %w", err)
	}
	v := validity{notBefore: leaf.NotBefore, notAfter: leaf.NotAfter}
	for _, certs := range [][]*x509.Certificate{intermediates, chains[0]} {
		for _, c := range certs {
			if c.NotBefore.After(v.notBefore) {
				v.notBefore = c.NotBefore
			}
			if c.NotAfter.Before(v.notAfter) {
				v.notAfter = c.NotAfter
			}
		}
	}
	return v, nil
}

// curves returns the key exchanges to offer. Go ignores the order of
// tls.Config.CurvePreferences, so leaving X25519MLKEM768 out is the only way to
// prefer X25519, which costs less CPU per handshake than the hybrid
// (BenchmarkHandshake measures both).
func (s *Store) curves() []tls.CurveID {
	if s.cfg.PostQuantum {
		return []tls.CurveID{tls.X25519MLKEM768, tls.X25519, tls.CurveP256}
	}
	return []tls.CurveID{tls.X25519, tls.CurveP256}
}

// ServerConfig returns the TLS configuration of an HBONE server: TLS 1.3
// only, ALPN h2, a client certificate required, no session tickets. The
// certificate served is that of the identity identityFor returns for the
// connection's local (captured destination) address; local is the zero Addr
// when that address is not an IP address (net.Pipe). The handshake fails if
// identityFor fails or the Store has no valid certificate for the identity.
// VerifyConnection accepts only clients whose chain verifies to the Store's
// roots for client authentication and whose single SPIFFE ID is in the
// Store's trust domain; read the identity afterwards with PeerIdentity.
// Certificates are read at each handshake, so rotation needs no restart.
//
// crypto/tls does not let TLS 1.3 cipher suites be configured; on hardware
// with AES instructions it picks AES-GCM, as ztunnel requires. Key exchange
// is X25519 (or P-256) unless StoreConfig.PostQuantum is set.
func (s *Store) ServerConfig(identityFor func(local netip.Addr) (Identity, error)) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		ClientAuth:             tls.RequireAnyClientCert, // verified in VerifyConnection
		SessionTicketsDisabled: true,
		CurvePreferences:       s.curves(),
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			var local netip.Addr
			if hello.Conn != nil {
				local = ipOf(hello.Conn.LocalAddr())
			}
			id, err := identityFor(local)
			if err != nil {
				return nil, fmt.Errorf("certs: no server identity for %s: %w", local, err)
			}
			return s.waitCertificate(hello.Context(), id)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("certs: client did not negotiate ALPN %q", ALPN)
			}
			_, err := s.peers.verify(cs.PeerCertificates, s.Roots(), s.cfg.TrustDomain, time.Now(), x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// ClientConfig returns the TLS configuration of an HBONE client presenting
// src's certificate to a server that must be want: TLS 1.3 only, ALPN h2, no
// SNI, no session resumption. VerifyConnection checks the server's chain
// against the Store's roots for server authentication and requires the
// server's single SPIFFE ID to equal want (hostname verification does not
// apply, so InsecureSkipVerify is set and VerifyConnection does the full
// verification). The handshake fails if the Store has no valid certificate
// for src.
func (s *Store) ClientConfig(src, want Identity) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{ALPN},
		InsecureSkipVerify:     true, // VerifyConnection verifies the chain and the identity
		SessionTicketsDisabled: true,
		CurvePreferences:       s.curves(),
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.waitCertificate(cri.Context(), src)
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if want.IsZero() {
				return errors.New("certs: no expected server identity")
			}
			if cs.NegotiatedProtocol != ALPN {
				return fmt.Errorf("certs: server %s did not negotiate ALPN %q", want, ALPN)
			}
			got, err := s.peers.verify(cs.PeerCertificates, s.Roots(), "", time.Now(), x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("certs: server identity is %s, want %s", got, want)
			}
			return nil
		},
	}
}

// ipOf returns the IP address of a net.Addr, unmapped, or the zero Addr.
func ipOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	case nil:
		return netip.Addr{}
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// firstCertificateWait bounds how long a handshake waits for the first
// certificate of a local identity: a new pod's first connections can come
// before its agent has been issued one, and refusing them would fail a pod
// that connects as it starts.
const firstCertificateWait = 5 * time.Second

// waitCertificate returns id's certificate, first waiting (within ctx and
// firstCertificateWait) while the first one is being issued. An identity
// not held, or one whose certificate expired, fails at once.
func (s *Store) waitCertificate(ctx context.Context, id Identity) (*tls.Certificate, error) {
	c, err := s.Certificate(id)
	if err == nil || !s.issuing(id) {
		return c, err
	}
	wctx, cancel := context.WithTimeout(ctx, firstCertificateWait)
	defer cancel()
	_ = s.WaitReady(wctx, id) // if it fails, Certificate says why
	return s.Certificate(id)
}
