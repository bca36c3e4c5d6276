package certs_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

// switchIssuer forwards to an Issuer, or fails while told to, and records
// when each call happened.
type switchIssuer struct {
	next certs.Issuer

	mu    sync.Mutex
	fail  bool
	calls []issueCall
}

type issueCall struct {
	id certs.Identity
	at time.Time
}

func (s *switchIssuer) Issue(ctx context.Context, id certs.Identity, csr []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	s.mu.Lock()
	s.calls = append(s.calls, issueCall{id, time.Now()})
	fail := s.fail
	s.mu.Unlock()
	if fail {
		return nil, errors.New("CA unavailable")
	}
	return s.next.Issue(ctx, id, csr, ttl)
}

func (s *switchIssuer) setFail(v bool) {
	s.mu.Lock()
	s.fail = v
	s.mu.Unlock()
}

// callTimes returns the times of the calls for id.
func (s *switchIssuer) callTimes(id certs.Identity) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []time.Time
	for _, c := range s.calls {
		if c.id == id {
			out = append(out, c.at)
		}
	}
	return out
}

func serialOf(t *testing.T, s *certs.Store, id certs.Identity) string {
	t.Helper()
	c, err := s.Certificate(id)
	if err != nil {
		t.Fatalf("Certificate(%s): %v", id, err)
	}
	return c.Leaf.SerialNumber.Text(16)
}

func statusOf(t *testing.T, s *certs.Store, id certs.Identity) certs.CertStatus {
	t.Helper()
	for _, st := range s.Snapshot() {
		if st.Identity == id {
			return st
		}
	}
	t.Fatalf("%s not in Snapshot", id)
	return certs.CertStatus{}
}

// TestStoreLifecycle walks one identity through issuance, renewal at half
// life, a CA outage (back-off, the old certificate still served), expiry
// (fail closed) and recovery, on synctest's fake clock.
func TestStoreLifecycle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t, certstest.WithIntermediate())
		id := ca.Identity("default", "app")
		iss := &switchIssuer{next: ca.Issuer()}
		cfg := ca.StoreConfig()
		cfg.MinBackoff, cfg.MaxBackoff = time.Second, 2*time.Minute
		s := ca.StoreWith(t, cfg, iss, id)
		start := time.Now()

		first := serialOf(t, s, id)
		st := statusOf(t, s, id)
		if st.State != certs.CertValid || st.Serial != first || st.LastError != "" || !strings.Contains(st.ChainPEM, "BEGIN CERTIFICATE") {
			t.Fatalf("after issuance: %+v", st)
		}
		if n := strings.Count(st.ChainPEM, "BEGIN CERTIFICATE"); n != 3 {
			t.Errorf("chain has %d certificates, want leaf, intermediate, root", n)
		}
		life := st.NotAfter.Sub(st.NotBefore)
		if life < 24*time.Hour || life > 24*time.Hour+certs.ClockSkew {
			t.Errorf("lifetime %s, want 24h (+ clock skew)", life)
		}
		if !st.NotBefore.Before(start) {
			t.Errorf("NotBefore %s not backdated before issuance at %s", st.NotBefore, start)
		}

		// Renewal comes at half life, brought forward by at most a tenth.
		renewEarliest := st.NotBefore.Add(life/2 - life/10)
		renewLatest := st.NotBefore.Add(life / 2)
		time.Sleep(time.Until(renewEarliest) - time.Second)
		synctest.Wait()
		if got := serialOf(t, s, id); got != first {
			t.Fatalf("renewed before 0.4 of the lifetime")
		}
		time.Sleep(time.Until(renewLatest) + time.Second)
		synctest.Wait()
		second := serialOf(t, s, id)
		if second == first {
			t.Fatalf("not renewed by half life")
		}
		calls := iss.callTimes(id)
		if len(calls) != 2 {
			t.Fatalf("%d issuance calls, want 2", len(calls))
		}
		if calls[1].Before(renewEarliest) || calls[1].After(renewLatest) {
			t.Errorf("renewed at %s, want between %s and %s", calls[1], renewEarliest, renewLatest)
		}

		// The CA goes down at the next renewal: back-off, old cert served.
		st = statusOf(t, s, id)
		iss.setFail(true)
		time.Sleep(time.Until(st.NotBefore.Add(life/2)) + time.Hour)
		synctest.Wait()
		if got := serialOf(t, s, id); got != second {
			t.Fatalf("serial changed while the CA is down")
		}
		st = statusOf(t, s, id)
		if st.State != certs.CertValid || !strings.Contains(st.LastError, "CA unavailable") {
			t.Errorf("during outage: state %s, last error %q", st.State, st.LastError)
		}
		calls = iss.callTimes(id)[2:]
		if len(calls) < 10 {
			t.Fatalf("%d retries in the first hour of the outage", len(calls))
		}
		var prev time.Duration
		for i := 1; i < len(calls); i++ {
			gap := calls[i].Sub(calls[i-1])
			if gap > cfg.MaxBackoff {
				t.Errorf("retry %d after %s, above the %s cap", i, gap, cfg.MaxBackoff)
			}
			if gap < cfg.MinBackoff*8/10 {
				t.Errorf("retry %d after %s, below the minimum", i, gap)
			}
			if i < 6 && gap < prev*3/2 {
				t.Errorf("retry %d after %s, previous %s: not exponential", i, gap, prev)
			}
			if i > 10 && gap < cfg.MaxBackoff*8/10 {
				t.Errorf("retry %d after %s, want about the cap %s", i, gap, cfg.MaxBackoff)
			}
			prev = gap
		}

		// Past NotAfter the certificate is never served.
		time.Sleep(time.Until(st.NotAfter) + time.Second)
		synctest.Wait()
		if _, err := s.Certificate(id); !errors.Is(err, certs.ErrNoCertificate) || !strings.Contains(err.Error(), "expired at") {
			t.Fatalf("Certificate after expiry: %v; want ErrNoCertificate, expired", err)
		}
		if s.Ready(id) {
			t.Error("Ready after expiry")
		}
		if st := statusOf(t, s, id); st.State != certs.CertExpired {
			t.Errorf("state %s after expiry", st.State)
		}
		other := ca.Identity("default", "client")
		r := certstest.Handshake(t, certstest.PeerConfig(ca.Leaf(t, other)), s.ServerConfig(fixed(id)))
		if r.ServerErr == nil || !errors.Is(r.ServerErr, certs.ErrNoCertificate) {
			t.Errorf("handshake with an expired server certificate: %v", r.ServerErr)
		}

		// The CA comes back: a new certificate within one back-off period.
		iss.setFail(false)
		time.Sleep(cfg.MaxBackoff + time.Second)
		synctest.Wait()
		if !s.Ready(id) {
			t.Fatal("not ready after the CA recovered")
		}
		if st := statusOf(t, s, id); st.State != certs.CertValid || st.LastError != "" || st.Serial == second {
			t.Errorf("after recovery: %+v", st)
		}
	})
}

func TestStoreRenewalJitter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t)
		var ids []certs.Identity
		for _, sa := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
			ids = append(ids, ca.Identity("ns", sa))
		}
		iss := &switchIssuer{next: ca.Issuer()}
		ca.StoreWith(t, ca.StoreConfig(), iss, ids...)
		time.Sleep(13 * time.Hour)
		synctest.Wait()
		renewals := map[time.Time]bool{}
		for _, id := range ids {
			calls := iss.callTimes(id)
			if len(calls) != 2 {
				t.Fatalf("%s: %d calls, want 2", id, len(calls))
			}
			renewals[calls[1]] = true
		}
		if len(renewals) < 2 {
			t.Errorf("all %d identities renewed at the same instant", len(ids))
		}
	})
}

func TestStoreSetIdentities(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t)
		a, b := ca.Identity("ns", "a"), ca.Identity("ns", "b")
		iss := &switchIssuer{next: ca.Issuer()}
		s := ca.StoreWith(t, ca.StoreConfig(), iss, a)

		s.SetIdentities([]certs.Identity{a, b})
		if err := s.WaitReady(t.Context(), b); err != nil {
			t.Fatal(err)
		}
		keep := serialOf(t, s, a)

		s.SetIdentities([]certs.Identity{b, b}) // a's pod left the node
		if _, err := s.Certificate(a); !errors.Is(err, certs.ErrNoCertificate) || !strings.Contains(err.Error(), "not a local identity") {
			t.Fatalf("Certificate of a dropped identity: %v", err)
		}
		if snap := s.Snapshot(); len(snap) != 1 || snap[0].Identity != b {
			t.Fatalf("Snapshot after drop: %+v", snap)
		}
		time.Sleep(48 * time.Hour)
		synctest.Wait()
		if n := len(iss.callTimes(a)); n != 1 {
			t.Errorf("%d issuance calls for a dropped identity, want 1", n)
		}
		if n := len(iss.callTimes(b)); n < 4 {
			t.Errorf("%d issuance calls for b over two days, want renewals", n)
		}

		// Back again: a new certificate (the old key was dropped).
		s.SetIdentities([]certs.Identity{a, b})
		if err := s.WaitReady(t.Context(), a); err != nil {
			t.Fatal(err)
		}
		if serialOf(t, s, a) == keep {
			t.Error("re-added identity got its old certificate back")
		}

		// Invalid and foreign identities are ignored.
		s.SetIdentities([]certs.Identity{a, {TrustDomain: "other.td", Namespace: "ns", ServiceAccount: "x"}, {Namespace: "ns"}})
		if snap := s.Snapshot(); len(snap) != 1 || snap[0].Identity != a {
			t.Errorf("Snapshot: %+v", snap)
		}
		s.SetIdentities(nil)
		if snap := s.Snapshot(); len(snap) != 0 {
			t.Errorf("Snapshot after SetIdentities(nil): %+v", snap)
		}
	})
}

func TestStoreFirstIssuanceFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t)
		id := ca.Identity("ns", "a")
		iss := &switchIssuer{next: ca.Issuer(), fail: true}
		s := ca.StoreWith(t, ca.StoreConfig(), iss)

		if _, err := s.Certificate(id); !strings.Contains(err.Error(), "not a local identity") {
			t.Errorf("before SetIdentities: %v", err)
		}
		s.SetIdentities([]certs.Identity{id})
		if st := statusOf(t, s, id); st.State != certs.CertPending && st.State != certs.CertError {
			t.Errorf("state %s", st.State)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		if err := s.WaitReady(ctx, id); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitReady while the CA fails: %v", err)
		}
		_, err := s.Certificate(id)
		if !errors.Is(err, certs.ErrNoCertificate) || !strings.Contains(err.Error(), "not issued yet") || !strings.Contains(err.Error(), "CA unavailable") {
			t.Errorf("Certificate: %v", err)
		}
		st := statusOf(t, s, id)
		if st.State != certs.CertError || st.Serial != "" || st.NextAttempt.IsZero() {
			t.Errorf("status %+v", st)
		}

		iss.setFail(false)
		if err := s.WaitReady(t.Context(), id); err != nil {
			t.Fatal(err)
		}
	})
}

// badIssuer returns a chain that the Store must refuse.
type badIssuer func(ctx context.Context, id certs.Identity, csr []byte, ttl time.Duration) ([]*x509.Certificate, error)

func (f badIssuer) Issue(ctx context.Context, id certs.Identity, csr []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	return f(ctx, id, csr, ttl)
}

func TestStoreRefusesBadIssuance(t *testing.T) {
	type env struct {
		t         *testing.T
		ca, other *certstest.CA
		id        certs.Identity
	}
	tests := []struct {
		name string
		iss  func(e env) badIssuer
		want string
	}{
		{"empty chain", func(env) badIssuer {
			return func(context.Context, certs.Identity, []byte, time.Duration) ([]*x509.Certificate, error) {
				return nil, nil
			}
		}, "no certificate"},
		{"other key", func(e env) badIssuer {
			leaf := e.ca.Leaf(e.t, e.id).Leaf
			return func(context.Context, certs.Identity, []byte, time.Duration) ([]*x509.Certificate, error) {
				return []*x509.Certificate{leaf, e.ca.Root()}, nil
			}
		}, "not for our key"},
		{"other identity", func(e env) badIssuer {
			return func(ctx context.Context, _ certs.Identity, csrPEM []byte, ttl time.Duration) ([]*x509.Certificate, error) {
				csr, err := certs.CheckCSR(e.id, csrPEM)
				if err != nil {
					return nil, err
				}
				return e.ca.Issuer().Sign(e.ca.Identity("ns", "admin"), csr.PublicKey, ttl)
			}
		}, "issued certificate is for spiffe://cluster.local/ns/ns/sa/admin"},
		{"untrusted root", func(e env) badIssuer { return e.other.Issuer().Issue }, "untrusted root"},
		{"timeout", func(env) badIssuer {
			return func(ctx context.Context, _ certs.Identity, _ []byte, _ time.Duration) ([]*x509.Certificate, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			}
		}, "deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ca := certstest.NewCA(t)
				e := env{t: t, ca: ca, other: certstest.NewCA(t), id: ca.Identity("ns", "a")}
				cfg := ca.StoreConfig()
				cfg.IssueTimeout = 10 * time.Second
				s := ca.StoreWith(t, cfg, tt.iss(e))
				s.SetIdentities([]certs.Identity{e.id})
				time.Sleep(time.Minute)
				synctest.Wait()
				_, err := s.Certificate(e.id)
				if !errors.Is(err, certs.ErrNoCertificate) || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("Certificate: %v; want ErrNoCertificate mentioning %q", err, tt.want)
				}
			})
		})
	}
}

func TestNewStoreValidates(t *testing.T) {
	ca := certstest.NewCA(t)
	log := slog.New(slog.DiscardHandler)
	good := ca.StoreConfig()
	tests := []struct {
		name   string
		mutate func(*certs.StoreConfig)
		iss    certs.Issuer
		log    *slog.Logger
		want   string
	}{
		{"no trust domain", func(c *certs.StoreConfig) { c.TrustDomain = "" }, ca.Issuer(), log, "invalid trust domain"},
		{"bad trust domain", func(c *certs.StoreConfig) { c.TrustDomain = "Cluster.Local" }, ca.Issuer(), log, "invalid trust domain"},
		{"no roots", func(c *certs.StoreConfig) { c.Roots = nil }, ca.Issuer(), log, "no trusted roots"},
		{"no issuer", func(*certs.StoreConfig) {}, nil, log, "no issuer"},
		{"no logger", func(*certs.StoreConfig) {}, ca.Issuer(), nil, "no logger"},
		{"negative TTL", func(c *certs.StoreConfig) { c.TTL = -1 }, ca.Issuer(), log, "negative"},
		{"backoff inverted", func(c *certs.StoreConfig) { c.MinBackoff, c.MaxBackoff = time.Minute, time.Second }, ca.Issuer(), log, "below MinBackoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mutate(&cfg)
			s, err := certs.NewStore(cfg, tt.iss, tt.log)
			if err == nil || !strings.Contains(err.Error(), tt.want) || s != nil {
				t.Fatalf("NewStore = %v, %v; want error containing %q", s, err, tt.want)
			}
		})
	}
	if _, err := certs.NewStore(good, ca.Issuer(), log); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

func TestStoreRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t)
		s := ca.Store(t)
		synctest.Wait() // the first Run has started
		if err := s.Run(t.Context()); err == nil {
			t.Fatal("second Run succeeded")
		}
	})
}

func TestStoreBeforeRun(t *testing.T) {
	ca := certstest.NewCA(t)
	s, err := certs.NewStore(ca.StoreConfig(), ca.Issuer(), certstest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	id := ca.Identity("ns", "a")
	s.SetIdentities([]certs.Identity{id})
	if s.Ready(id) {
		t.Fatal("ready before Run")
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	if err := s.WaitReady(t.Context(), id); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// Stopping does not withdraw a valid certificate.
	if !s.Ready(id) {
		t.Error("not ready after Run stopped")
	}
}

// gateIssuer blocks every call until released, counting calls in flight.
type gateIssuer struct {
	next    certs.Issuer
	release chan struct{}

	mu                sync.Mutex
	inFlight, maxSeen int
}

func (g *gateIssuer) Issue(ctx context.Context, id certs.Identity, csr []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	g.mu.Lock()
	g.inFlight++
	g.maxSeen = max(g.maxSeen, g.inFlight)
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		g.inFlight--
		g.mu.Unlock()
	}()
	select {
	case <-g.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.next.Issue(ctx, id, csr, ttl)
}

func TestStoreBoundsConcurrentIssues(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ca := certstest.NewCA(t)
		g := &gateIssuer{next: ca.Issuer(), release: make(chan struct{})}
		cfg := ca.StoreConfig()
		cfg.MaxConcurrentIssues = 2
		s := ca.StoreWith(t, cfg, g)
		var ids []certs.Identity
		for _, sa := range []string{"a", "b", "c", "d", "e"} {
			ids = append(ids, ca.Identity("ns", sa))
		}
		s.SetIdentities(ids)
		synctest.Wait()
		g.mu.Lock()
		inFlight := g.inFlight
		g.mu.Unlock()
		if inFlight != 2 {
			t.Fatalf("%d requests in flight, want the limit of 2", inFlight)
		}
		close(g.release)
		for _, id := range ids {
			if err := s.WaitReady(t.Context(), id); err != nil {
				t.Fatal(err)
			}
		}
		if g.maxSeen != 2 {
			t.Errorf("at most %d requests were in flight, want 2", g.maxSeen)
		}
	})
}

// TestSnapshotJSON pins the field names the admin endpoint and `ferry certs`
// read.
func TestSnapshotJSON(t *testing.T) {
	ca := certstest.NewCA(t)
	id := ca.Identity("ns", "a")
	s := ca.Store(t, id)
	b, err := json.Marshal(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%s", b)
	}
	for _, k := range []string{"identity", "state", "serial", "notBefore", "notAfter", "nextAttempt", "chainPEM"} {
		if _, ok := got[0][k]; !ok {
			t.Errorf("no %q in %s", k, b)
		}
	}
	if got[0]["identity"] != id.String() || got[0]["state"] != "valid" {
		t.Errorf("identity %v, state %v", got[0]["identity"], got[0]["state"])
	}
	if _, ok := got[0]["lastError"]; ok {
		t.Errorf("lastError present without an error: %s", b)
	}
}
