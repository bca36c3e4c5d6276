package certs_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/certs"
)

func TestParseIdentity(t *testing.T) {
	tests := []struct {
		in      string
		want    certs.Identity
		wantErr string // substring; "" means success
	}{
		{in: "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
			want: certs.Identity{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "bookinfo-productpage"}},
		{in: "spiffe://td/ns/a/sa/b", want: certs.Identity{TrustDomain: "td", Namespace: "a", ServiceAccount: "b"}},
		{in: "spiffe://my_td-1.example/ns/kube-system/sa/Default.sa_1",
			want: certs.Identity{TrustDomain: "my_td-1.example", Namespace: "kube-system", ServiceAccount: "Default.sa_1"}},

		{in: "", wantErr: "want spiffe://"},
		{in: "spiffe://", wantErr: "want spiffe://"},
		{in: "SPIFFE://td/ns/a/sa/b", wantErr: "want spiffe://"},        // scheme is case-sensitive here: one spelling per identity
		{in: "https://td/ns/a/sa/b", wantErr: "want spiffe://"},         // wrong scheme
		{in: "spiffe://td/ns/a/sa/b/", wantErr: "want spiffe://"},       // trailing slash
		{in: "spiffe://td/ns/a/sa", wantErr: "want spiffe://"},          // too few segments
		{in: "spiffe://td/ns/a/sa/b/c", wantErr: "want spiffe://"},      // too many segments (Istio requires exactly 5)
		{in: "spiffe://td/namespace/a/sa/b", wantErr: "want spiffe://"}, // wrong keyword
		{in: "spiffe://td/ns/a/serviceaccount/b", wantErr: "want spiffe://"},
		{in: "spiffe:///ns/a/sa/b", wantErr: "invalid trust domain"},          // empty trust domain
		{in: "spiffe://TD/ns/a/sa/b", wantErr: "invalid trust domain"},        // SPIFFE trust domains are lowercase
		{in: "spiffe://td:8080/ns/a/sa/b", wantErr: "invalid trust domain"},   // port
		{in: "spiffe://u@td/ns/a/sa/b", wantErr: "invalid trust domain"},      // user info
		{in: "spiffe://td/ns//sa/b", wantErr: "invalid namespace"},            // empty namespace
		{in: "spiffe://td/ns/../sa/b", wantErr: "invalid namespace"},          // dot segments
		{in: "spiffe://td/ns/./sa/b", wantErr: "invalid namespace"},           // dot segments
		{in: "spiffe://td/ns/a%2Fb/sa/b", wantErr: "invalid namespace"},       // escapes
		{in: "spiffe://td/ns/a/sa/b?x=1", wantErr: "invalid service account"}, // query
		{in: "spiffe://td/ns/a/sa/b#f", wantErr: "invalid service account"},   // fragment
		{in: "spiffe://td/ns/a/sa/b\x00", wantErr: "invalid service account"}, // NUL (CVE-2026-47778 class)
		{in: "spiffe://td/ns/a/sa/" + strings.Repeat("x", 254), wantErr: "invalid service account"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := certs.ParseIdentity(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseIdentity(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				if !got.IsZero() {
					t.Errorf("ParseIdentity(%q) returned %+v with an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseIdentity(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if s := got.String(); s != tt.in {
				t.Errorf("String() = %q, want %q", s, tt.in)
			}
			if p := got.Principal(); "spiffe://"+p != tt.in {
				t.Errorf("Principal() = %q", p)
			}
		})
	}
}

func TestZeroIdentity(t *testing.T) {
	var id certs.Identity
	if !id.IsZero() || id.String() != "" || id.Principal() != "" {
		t.Errorf("zero Identity: IsZero=%v String=%q Principal=%q", id.IsZero(), id.String(), id.Principal())
	}
	if id.Validate() == nil {
		t.Error("zero Identity validates")
	}
}

func TestPeerIdentity(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	want := certs.Identity{TrustDomain: "td", Namespace: "a", ServiceAccount: "b"}
	tests := []struct {
		name string
		cs   tls.ConnectionState
		want certs.Identity
		err  bool
	}{
		{"no certificate", tls.ConnectionState{}, certs.Identity{}, true},
		{"no SAN", tls.ConnectionState{PeerCertificates: []*x509.Certificate{{}}}, certs.Identity{}, true},
		{"https only", tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{mustURL("https://td/ns/a/sa/b")}}}}, certs.Identity{}, true},
		{"first spiffe wins", tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{
			mustURL("https://x"), mustURL("spiffe://td/ns/a/sa/b"), mustURL("spiffe://td/ns/c/sa/d")}}}}, want, false},
		{"query", tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{mustURL("spiffe://td/ns/a/sa/b?")}}}}, certs.Identity{}, true},
		{"escaped", tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{mustURL("spiffe://td/ns/%61/sa/b")}}}}, certs.Identity{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := certs.PeerIdentity(tt.cs)
			if (err != nil) != tt.err || got != tt.want {
				t.Fatalf("PeerIdentity = %v, %v; want %v, error %v", got, err, tt.want, tt.err)
			}
			if tt.name == "no SAN" && !errors.Is(err, certs.ErrNoPeerIdentity) {
				t.Errorf("error %v is not ErrNoPeerIdentity", err)
			}
		})
	}
}

// FuzzParseIdentity checks that ParseIdentity never panics, that whatever it
// accepts formats back to the same string (one spelling per identity), and
// that a valid Identity survives String → ParseIdentity.
func FuzzParseIdentity(f *testing.F) {
	for _, seed := range []string{
		"spiffe://cluster.local/ns/default/sa/default", // the common case
		"spiffe://td/ns/a/sa/b",                        // shortest names
		"spiffe://cluster.local/ns/a/sa/b/extra",       // too many segments
		"spiffe://cluster.local/ns/a/sa/",              // empty service account
		"spiffe://Cluster.Local/ns/a/sa/b",             // upper-case trust domain
		"spiffe://td:1/ns/a/sa/b",                      // port in the trust domain
		"spiffe://td/ns/../sa/b",                       // dot segment
		"spiffe://td/ns/a%2F/sa/b",                     // escape
		"spiffe://td/ns/a/sa/b\x00",                    // NUL byte
		"spiffe://td/ns/ü/sa/b",                        // non-ASCII
		"spiffe://td//ns/a/sa/b",                       // empty segment
		"http://td/ns/a/sa/b",                          // wrong scheme
		"",                                             // nothing
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := certs.ParseIdentity(s)
		if err != nil {
			if !id.IsZero() {
				t.Fatalf("ParseIdentity(%q) returned %+v with error %v", s, id, err)
			}
			return
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("ParseIdentity(%q) = %+v, which does not validate: %v", s, id, err)
		}
		if got := id.String(); got != s {
			t.Fatalf("ParseIdentity(%q).String() = %q", s, got)
		}
		again, err := certs.ParseIdentity(id.String())
		if err != nil || again != id {
			t.Fatalf("round trip of %+v: %+v, %v", id, again, err)
		}
		// The URI form a certificate carries must map back to the same identity.
		u, err := url.Parse(id.String())
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", id.String(), err)
		}
		cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}}}
		if got, err := certs.PeerIdentity(cs); err != nil || got != id {
			t.Fatalf("PeerIdentity(%q) = %+v, %v", id.String(), got, err)
		}
	})
}
