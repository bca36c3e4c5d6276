package certs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoCertificate reports that the Store holds no currently valid certificate
// for an identity: none was issued yet, the identity is not local, or the one
// held is expired or not yet valid. Errors returned by Store.Certificate wrap
// it and say which.
var ErrNoCertificate = errors.New("certs: no valid certificate")

// Store defaults.
const (
	DefaultMinBackoff   = time.Second
	DefaultMaxBackoff   = 2 * time.Minute
	DefaultIssueTimeout = 30 * time.Second
	// DefaultMaxConcurrentIssues bounds the requests a Store has in flight,
	// so that a node full of new pods does not flood the CA.
	DefaultMaxConcurrentIssues = 8
)

// StoreConfig configures a Store.
type StoreConfig struct {
	// TrustDomain is the mesh's trust domain: the Store holds certificates
	// only for identities in it, and its server configuration accepts only
	// peers in it. Required.
	TrustDomain string
	// Roots are the mesh's trusted roots. Issued chains and peers must
	// verify to one of them. Required; Store.SetRoots replaces them.
	Roots *x509.CertPool
	// TTL is the certificate lifetime requested from the Issuer
	// (0 means DefaultCertTTL).
	TTL time.Duration
	// MinBackoff and MaxBackoff bound the exponential back-off between
	// failed issuance attempts (0 means DefaultMinBackoff, DefaultMaxBackoff).
	MinBackoff, MaxBackoff time.Duration
	// IssueTimeout bounds one call to the Issuer (0 means DefaultIssueTimeout).
	IssueTimeout time.Duration
	// MaxConcurrentIssues bounds the calls to the Issuer in flight
	// (0 means DefaultMaxConcurrentIssues).
	MaxConcurrentIssues int
	// PostQuantum offers the hybrid X25519MLKEM768 key exchange, which Go
	// then prefers. It costs about a third more CPU per handshake than
	// X25519, so it is off by default.
	PostQuantum bool
}

// Store keeps one rotating certificate per local identity (the service
// accounts with a pod on this node) and hands crypto/tls the hooks that use
// it, so rotation needs no restart.
//
// NewStore starts nothing; Run fetches and renews certificates. Certificates
// are renewed at about half their lifetime, with jitter; a failed attempt is
// retried with capped exponential back-off, and the previous certificate is
// served while it is still valid. An expired certificate is never served.
// A Store is safe for concurrent use.
type Store struct {
	cfg    StoreConfig
	issuer Issuer
	log    *slog.Logger

	roots atomic.Pointer[x509.CertPool]
	peers peerCache     // chains of peers that verified
	kick  chan struct{} // wakes Run after SetIdentities; capacity 1
	sem   chan struct{} // one token per Issuer call in flight

	mu      sync.Mutex
	entries map[Identity]*entry
	changed chan struct{} // closed, then replaced, on every change of state
	running bool
}

// entry is the state of one identity. Its fields are guarded by Store.mu.
type entry struct {
	id          Identity
	cert        *tls.Certificate    // nil until first issuance
	chain       []*x509.Certificate // as issued: leaf first, root last
	lastErr     error
	nextAttempt time.Time
	cancel      context.CancelFunc // nil until Run starts the renewal goroutine
}

// NewStore checks cfg and returns a Store that will get certificates from
// issuer. It starts nothing: call Run.
func NewStore(cfg StoreConfig, issuer Issuer, log *slog.Logger) (*Store, error) {
	if !ValidTrustDomain(cfg.TrustDomain) {
		return nil, fmt.Errorf("certs: store: invalid trust domain %q", cfg.TrustDomain)
	}
	if cfg.Roots == nil {
		return nil, errors.New("certs: store: no trusted roots")
	}
	if issuer == nil {
		return nil, errors.New("certs: store: no issuer")
	}
	if log == nil {
		return nil, errors.New("certs: store: no logger")
	}
	if cfg.TTL < 0 || cfg.MinBackoff < 0 || cfg.MaxBackoff < 0 || cfg.IssueTimeout < 0 || cfg.MaxConcurrentIssues < 0 {
		return nil, errors.New("certs: store: negative duration or limit")
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultCertTTL
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		return nil, fmt.Errorf("certs: store: MaxBackoff %s is below MinBackoff %s", cfg.MaxBackoff, cfg.MinBackoff)
	}
	if cfg.IssueTimeout == 0 {
		cfg.IssueTimeout = DefaultIssueTimeout
	}
	if cfg.MaxConcurrentIssues == 0 {
		cfg.MaxConcurrentIssues = DefaultMaxConcurrentIssues
	}
	s := &Store{
		cfg:     cfg,
		issuer:  issuer,
		log:     log,
		kick:    make(chan struct{}, 1),
		sem:     make(chan struct{}, cfg.MaxConcurrentIssues),
		entries: make(map[Identity]*entry),
		changed: make(chan struct{}),
	}
	s.roots.Store(cfg.Roots)
	return s, nil
}

// TrustDomain returns the Store's trust domain.
func (s *Store) TrustDomain() string { return s.cfg.TrustDomain }

// Roots returns the Store's current trusted roots. The caller must not
// modify them.
func (s *Store) Roots() *x509.CertPool { return s.roots.Load() }

// SetRoots replaces the trusted roots, for a root rotation (for example when
// Istio's root-cert.pem changes). Handshakes from then on verify peers
// against roots, and new certificates must chain to them; connections
// already established are not re-checked. The certificates held are kept:
// renew them with the new CA before removing the old root.
func (s *Store) SetRoots(roots *x509.CertPool) error {
	if roots == nil {
		return errors.New("certs: store: no trusted roots")
	}
	s.roots.Store(roots)
	s.log.Info("trusted roots replaced")
	return nil
}

// SetIdentities declares the complete set of local identities. A certificate
// is fetched for each new identity (once Run is running); the certificate of
// an identity no longer in ids is dropped at once. Invalid identities and
// identities outside the trust domain are logged and ignored.
func (s *Store) SetIdentities(ids []Identity) {
	want := make(map[Identity]bool, len(ids))
	for _, id := range ids {
		if err := id.Validate(); err != nil {
			s.log.Warn("ignoring invalid identity", "identity", id.String(), "error", err)
			continue
		}
		if id.TrustDomain != s.cfg.TrustDomain {
			s.log.Warn("ignoring identity outside the trust domain", "identity", id.String(), "trustDomain", s.cfg.TrustDomain)
			continue
		}
		want[id] = true
	}
	var added, dropped []string
	s.mu.Lock()
	for id, e := range s.entries {
		if !want[id] {
			if e.cancel != nil {
				e.cancel()
			}
			delete(s.entries, id)
			dropped = append(dropped, id.String())
		}
	}
	for id := range want {
		if s.entries[id] == nil {
			s.entries[id] = &entry{id: id}
			added = append(added, id.String())
		}
	}
	changed := len(added)+len(dropped) > 0
	if changed {
		s.notifyLocked()
	}
	s.mu.Unlock()
	if changed {
		slices.Sort(added)
		slices.Sort(dropped)
		s.log.Info("local identities changed", "added", added, "dropped", dropped)
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// Run fetches and renews the certificates of the declared identities until
// ctx is done, then stops every renewal goroutine and returns nil. It may be
// called once.
func (s *Store) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("certs: store: Run called twice")
	}
	s.running = true
	s.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		s.mu.Lock()
		for _, e := range s.entries {
			if e.cancel == nil {
				wctx, cancel := context.WithCancel(ctx)
				e.cancel = cancel
				wg.Go(func() { s.renewLoop(wctx, e) })
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			s.mu.Lock()
			for _, e := range s.entries {
				if e.cancel != nil {
					e.cancel()
				}
			}
			s.mu.Unlock()
			return nil
		case <-s.kick:
		}
	}
}

// renewLoop issues and renews e's certificate until ctx is done.
func (s *Store) renewLoop(ctx context.Context, e *entry) {
	defer func() {
		s.mu.Lock()
		e.nextAttempt = time.Time{}
		s.mu.Unlock()
	}()
	failures := 0
	for {
		leaf, wait, err := s.renew(ctx, e, failures)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
			s.log.Info("certificate issued", "identity", e.id.String(), "serial", serialHex(leaf),
				"notAfter", leaf.NotAfter, "renewIn", wait.Round(time.Second))
		} else {
			failures++
			s.log.Warn("certificate issuance failed", "identity", e.id.String(), "attempt", failures,
				"retryIn", wait.Round(time.Millisecond), "error", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// renewTime is when a certificate should be renewed: at half its lifetime,
// brought forward by a random fraction of up to a tenth of its lifetime so
// that certificates issued together are not renewed together.
func renewTime(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	if life <= 0 {
		return leaf.NotBefore
	}
	jitter := time.Duration(rand.Int64N(int64(life/10) + 1))
	return leaf.NotBefore.Add(life/2 - jitter)
}

// backoff returns the delay after the n-th consecutive failure (n ≥ 1):
// MinBackoff doubled each time, capped at MaxBackoff, minus up to 20% jitter.
func (s *Store) backoff(n int) time.Duration {
	d := s.cfg.MinBackoff
	for i := 1; i < n && d < s.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxBackoff)
	return d - time.Duration(rand.Int64N(int64(d/5)+1))
}

// renew obtains a new certificate for e and installs it, or, on failure,
// records the error and leaves the current certificate in place. failures
// is the number of consecutive failures before this attempt. It returns the
// new leaf and how long to wait before the next attempt, which it also
// records, with the certificate, in one step.
func (s *Store) renew(ctx context.Context, e *entry, failures int) (*x509.Certificate, time.Duration, error) {
	cert, chain, err := s.issue(ctx, e.id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ctx.Err() != nil {
		return nil, 0, ctx.Err() // dropped or shutting down: install nothing
	}
	var wait time.Duration
	if err != nil {
		wait = s.backoff(failures + 1)
		e.lastErr = err
	} else {
		wait = max(time.Until(renewTime(cert.Leaf)), s.cfg.MinBackoff)
		e.cert, e.chain, e.lastErr = cert, chain, nil
	}
	e.nextAttempt = time.Now().Add(wait)
	s.notifyLocked()
	if err != nil {
		return nil, wait, err
	}
	return cert.Leaf, wait, nil
}

// issue generates a key and gets it certified, checking what comes back.
func (s *Store) issue(ctx context.Context, id Identity) (*tls.Certificate, []*x509.Certificate, error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := NewCSR(id, key)
	if err != nil {
		return nil, nil, err
	}
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	ictx, cancel := context.WithTimeout(ctx, s.cfg.IssueTimeout)
	defer cancel()
	chain, err := s.issuer.Issue(ictx, id, csr, s.cfg.TTL)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: issue %s: %w", id, err)
	}
	if len(chain) == 0 {
		return nil, nil, fmt.Errorf("certs: issue %s: issuer returned no certificate", id)
	}
	leaf := chain[0]
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, nil, fmt.Errorf("certs: issue %s: issued certificate is not for our key", id)
	}
	got, err := leafIdentity(leaf)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: issue %s: issued certificate: %w", id, err)
	}
	if got != id {
		return nil, nil, fmt.Errorf("certs: issue %s: issued certificate is for %s", id, got)
	}
	// The same certificate serves both ends of a tunnel.
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := verifyChain(leaf, chain[1:], s.Roots(), time.Now(), usage); err != nil {
			return nil, nil, fmt.Errorf("certs: issue %s: issued certificate: %w", id, err)
		}
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		if c != leaf && isSelfSigned(c) {
			continue // the peer has the root; sending it only costs bytes
		}
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, chain, nil
}

// notifyLocked wakes everyone waiting for a change. s.mu must be held.
func (s *Store) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Certificate returns the current certificate for id. It returns an error
// wrapping ErrNoCertificate, saying why, when id is not a local identity, no
// certificate has been issued yet, or the one held is expired or not yet
// valid: the Store fails closed rather than serve an invalid certificate.
func (s *Store) Certificate(id Identity) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[id]
	if e == nil {
		return nil, fmt.Errorf("%w for %s: not a local identity", ErrNoCertificate, id)
	}
	if e.cert == nil {
		if e.lastErr != nil {
			return nil, fmt.Errorf("%w for %s: not issued yet; last attempt: %v", ErrNoCertificate, id, e.lastErr)
		}
		return nil, fmt.Errorf("%w for %s: not issued yet", ErrNoCertificate, id)
	}
	if err := checkValidity(e.cert.Leaf, time.Now()); err != nil {
		if e.lastErr != nil {
			return nil, fmt.Errorf("%w for %s: %v; last renewal attempt: %v", ErrNoCertificate, id, err, e.lastErr)
		}
		return nil, fmt.Errorf("%w for %s: %v", ErrNoCertificate, id, err)
	}
	return e.cert, nil
}

// issuing reports whether id is held and waits for its first certificate.
func (s *Store) issuing(id Identity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[id]
	return e != nil && e.cert == nil
}

// Ready reports whether Certificate(id) would return a certificate now.
func (s *Store) Ready(id Identity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[id]
	return e != nil && e.cert != nil && checkValidity(e.cert.Leaf, time.Now()) == nil
}

// WaitReady blocks until Ready(id) or ctx is done, and returns ctx's error in
// the latter case. Run must be running (or start) for it to return nil.
func (s *Store) WaitReady(ctx context.Context, id Identity) error {
	for {
		s.mu.Lock()
		e := s.entries[id]
		ready := e != nil && e.cert != nil && checkValidity(e.cert.Leaf, time.Now()) == nil
		ch := s.changed
		var notBefore time.Time
		if e != nil && e.cert != nil {
			notBefore = e.cert.Leaf.NotBefore
		}
		s.mu.Unlock()
		if ready {
			return nil
		}
		if err := s.waitChange(ctx, ch, time.Until(notBefore)); err != nil {
			return fmt.Errorf("certs: waiting for a certificate for %s: %w", id, err)
		}
	}
}

// waitChange waits for ch to close, for d (if positive) to pass, or for ctx.
func (s *Store) waitChange(ctx context.Context, ch <-chan struct{}, d time.Duration) error {
	var wake <-chan time.Time
	if d > 0 { // a certificate is held but not yet valid
		t := time.NewTimer(d)
		defer t.Stop()
		wake = t.C
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
	case <-wake:
	}
	return nil
}

// CertState is the state of one identity's certificate in a Snapshot.
type CertState string

// Certificate states.
const (
	// CertPending: no certificate yet, and no failed attempt.
	CertPending CertState = "pending"
	// CertValid: a certificate valid now is being served.
	CertValid CertState = "valid"
	// CertExpired: the certificate held is outside its validity period and is
	// not served.
	CertExpired CertState = "expired"
	// CertError: no certificate yet, and the last attempt failed.
	CertError CertState = "error"
)

// CertStatus describes one identity's certificate, for the admin endpoint.
type CertStatus struct {
	Identity  Identity  `json:"-"`
	ID        string    `json:"identity"`
	State     CertState `json:"state"`
	Serial    string    `json:"serial,omitempty"` // lower-case hex
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// NextAttempt is when the next issuance attempt is scheduled (zero when
	// none is, for example before Run).
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	// LastError is the error of the last attempt, if it failed, even when a
	// still-valid certificate is being served.
	LastError string `json:"lastError,omitempty"`
	// ChainPEM is the chain as issued: leaf first, root last.
	ChainPEM string `json:"chainPEM,omitempty"`
}

// Snapshot returns the state of every local identity, sorted by identity.
func (s *Store) Snapshot() []CertStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	out := make([]CertStatus, 0, len(s.entries))
	for id, e := range s.entries {
		st := CertStatus{Identity: id, ID: id.String(), State: CertPending, NextAttempt: e.nextAttempt}
		if e.lastErr != nil {
			st.LastError = e.lastErr.Error()
			st.State = CertError
		}
		if e.cert != nil {
			leaf := e.cert.Leaf
			st.Serial = serialHex(leaf)
			st.NotBefore, st.NotAfter = leaf.NotBefore, leaf.NotAfter
			st.ChainPEM = string(EncodeCertificatesPEM(e.chain))
			st.State = CertValid
			if checkValidity(leaf, now) != nil {
				st.State = CertExpired
			}
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b CertStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// checkValidity reports whether now is inside c's validity period.
func checkValidity(c *x509.Certificate, now time.Time) error {
	if now.After(c.NotAfter) {
		return fmt.Errorf("certificate expired at %s", c.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(c.NotBefore) {
		return fmt.Errorf("certificate not valid before %s", c.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}
