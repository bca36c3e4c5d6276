package certs

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"sync"
	"time"
)

// peerCacheSize bounds the chains a Store remembers: a few per peer
// identity in a large mesh.
const peerCacheSize = 4096

// peerCache remembers peer chains that verified, so that the next handshake
// presenting the very same certificates skips the chain's signature checks
// (one ECDSA verification per certificate, the largest cost of a server
// handshake after the key exchange). An entry is used only while the roots
// it was verified against are still the Store's roots and only within the
// chain's validity window; a root rotation or an expiry verifies afresh.
// The TLS handshake itself still checks, every time, that the peer holds
// the leaf's private key. Only successes are remembered.
type peerCache struct {
	mu sync.Mutex
	m  map[peerKey]peerEntry
}

// peerKey names a presented chain, byte for byte, and the usage verified.
type peerKey struct {
	sum   [sha256.Size]byte
	usage x509.ExtKeyUsage
}

type peerEntry struct {
	roots *x509.CertPool
	id    Identity
	valid validity
}

// verify is verifyPeer, answered from the cache when it can be.
func (c *peerCache) verify(chain []*x509.Certificate, roots *x509.CertPool, trustDomain string, now time.Time, usage x509.ExtKeyUsage) (Identity, error) {
	key := peerKey{sum: chainSum(chain), usage: usage}
	c.mu.Lock()
	e, ok := c.m[key]
	c.mu.Unlock()
	if ok && e.roots == roots && e.valid.contains(now) && (trustDomain == "" || e.id.TrustDomain == trustDomain) {
		return e.id, nil
	}
	id, v, err := verifyPeer(chain, roots, trustDomain, now, usage)
	if err != nil {
		return Identity{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[peerKey]peerEntry)
	}
	if len(c.m) >= peerCacheSize {
		c.evictLocked(now)
	}
	c.m[key] = peerEntry{roots: roots, id: id, valid: v}
	return id, nil
}

// evictLocked drops expired entries, and if none were, an arbitrary one.
func (c *peerCache) evictLocked(now time.Time) {
	n := len(c.m)
	for k, e := range c.m {
		if now.After(e.valid.notAfter) {
			delete(c.m, k)
		}
	}
	if len(c.m) < n {
		return
	}
	for k := range c.m {
		delete(c.m, k)
		return
	}
}

// chainSum hashes the certificates' DER encodings, each length-prefixed.
func chainSum(chain []*x509.Certificate) [sha256.Size]byte {
	h := sha256.New()
	var n [4]byte
	for _, c := range chain {
		binary.BigEndian.PutUint32(n[:], uint32(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}
