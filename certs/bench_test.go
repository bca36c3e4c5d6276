package certs_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
)

// BenchmarkHandshake measures a full mutual TLS 1.3 handshake between the
// Store's client and server configurations over net.Pipe, both sides in this
// process; the figures are in bench/README.md.
func BenchmarkHandshake(b *testing.B) {
	for _, pq := range []bool{false, true} {
		name := "X25519"
		if pq {
			name = "X25519MLKEM768"
		}
		b.Run(name, func(b *testing.B) {
			ca := certstest.NewCA(b)
			src, dst := ca.Identity("ns", "client"), ca.Identity("ns", "server")
			cfg := ca.StoreConfig()
			cfg.PostQuantum = pq
			s := ca.StoreWith(b, cfg, ca.Issuer(), src, dst)
			client, server := s.ClientConfig(src, dst), s.ServerConfig(fixed(dst))
			b.ReportAllocs()
			for b.Loop() {
				r := certstest.Handshake(b, client, server)
				if r.ClientErr != nil || r.ServerErr != nil {
					b.Fatal(r.ClientErr, r.ServerErr)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

// BenchmarkVerifyPeer measures the per-handshake identity and chain checks.
func BenchmarkVerifyPeer(b *testing.B) {
	ca := certstest.NewCA(b, certstest.WithIntermediate())
	leaf := ca.Leaf(b, ca.Identity("ns", "sa"))
	var cs tls.ConnectionState
	cs.PeerCertificates = append(cs.PeerCertificates, leaf.Leaf, ca.Issuer().Chain()[0])
	roots := ca.Roots()
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := certs.VerifyPeer(cs, roots, "cluster.local", now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCertificate measures the Store lookup every handshake makes.
func BenchmarkCertificate(b *testing.B) {
	ca := certstest.NewCA(b)
	id := ca.Identity("ns", "sa")
	s := ca.Store(b, id)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Certificate(id); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLocalCAIssue measures CSR checking plus signing, the work `ferry
// ca` does per request.
func BenchmarkLocalCAIssue(b *testing.B) {
	ca := certstest.NewCA(b)
	id := ca.Identity("ns", "sa")
	key, _ := certs.GenerateKey()
	csr, _ := certs.NewCSR(id, key)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ca.Issuer().Issue(b.Context(), id, csr, 0); err != nil {
			b.Fatal(err)
		}
	}
}
