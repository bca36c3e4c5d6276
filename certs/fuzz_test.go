package certs_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"testing"

	"github.com/ferrymesh/ferry/certs"
)

// FuzzCheckCSR feeds arbitrary bytes to the CSR checks a CA runs on requests
// from the network: they must never panic, and whatever they accept must be
// a request for exactly the identity asked for.
func FuzzCheckCSR(f *testing.F) {
	id := certs.Identity{TrustDomain: "cluster.local", Namespace: "ns", ServiceAccount: "sa"}
	key, err := certs.GenerateKey()
	if err != nil {
		f.Fatal(err)
	}
	good, err := certs.NewCSR(id, key)
	if err != nil {
		f.Fatal(err)
	}
	block, _ := pem.Decode(good)
	f.Add(good)                                                                                     // a valid request
	f.Add(block.Bytes)                                                                              // DER without PEM armour
	f.Add(append(append([]byte{}, good...), good...))                                               // two requests
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n")) // empty sequence
	f.Add([]byte{})                                                                                 // nothing
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := certs.CheckCSR(id, data)
		if err != nil {
			if csr != nil {
				t.Fatal("CSR returned with an error")
			}
			// Also try the bytes as DER, so the fuzzer reaches the parser.
			data = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: data})
			if csr, err = certs.CheckCSR(id, data); err != nil {
				return
			}
		}
		if len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() || len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) != 0 {
			t.Fatalf("accepted a CSR with SANs %v %v %v %v", csr.URIs, csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR with a bad signature: %v", err)
		}
	})
}

// FuzzPeerIdentity checks that any URI a certificate can carry either maps to
// a valid identity whose String is that URI, or is refused.
func FuzzPeerIdentity(f *testing.F) {
	for _, s := range []string{
		"spiffe://cluster.local/ns/a/sa/b",      // canonical
		"spiffe://cluster.local/ns/a/sa/b?",     // empty query
		"spiffe://cluster.local/ns/%61/sa/b",    // escaped letter
		"spiffe://user@cluster.local/ns/a/sa/b", // user info
		"spiffe:cluster.local/ns/a/sa/b",        // opaque
		"SPIFFE://cluster.local/ns/a/sa/b",      // upper-case scheme (url.Parse lowers it)
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		id, err := certs.PeerIdentity(tlsState(u))
		if err != nil {
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("%q → invalid identity %+v", s, id)
		}
		if id.String() != u.String() {
			t.Fatalf("%q → %s, which prints differently from the SAN %q", s, id, u.String())
		}
	})
}

func tlsState(u *url.URL) (cs tls.ConnectionState) {
	cs.PeerCertificates = []*x509.Certificate{{URIs: []*url.URL{u}}}
	return cs
}
