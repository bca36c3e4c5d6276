package certs

import (
	"crypto/tls"
	"crypto/x509"
	"time"
)

// VerifyClient checks a client's certificates as s's server configuration
// does, cache included, at now.
func (s *Store) VerifyClient(cs tls.ConnectionState, now time.Time) (Identity, error) {
	return s.peers.verify(cs.PeerCertificates, s.Roots(), s.cfg.TrustDomain, now, x509.ExtKeyUsageClientAuth)
}

// CachedPeers reports how many verified chains s remembers.
func (s *Store) CachedPeers() int {
	s.peers.mu.Lock()
	defer s.peers.mu.Unlock()
	return len(s.peers.m)
}

// SetCachedIdentity makes every chain s remembers answer id, so that a test
// can tell an answer from the cache.
func (s *Store) SetCachedIdentity(id Identity) {
	s.peers.mu.Lock()
	defer s.peers.mu.Unlock()
	for k, e := range s.peers.m {
		e.id = id
		s.peers.m[k] = e
	}
}
