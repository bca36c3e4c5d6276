package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
)

// minRSABits is the smallest RSA modulus accepted in a CSR or as a CA key.
const minRSABits = 2048

// maxRSABits bounds the cost of verifying a peer's RSA signature.
const maxRSABits = 8192

// GenerateKey returns a new ECDSA P-256 private key from crypto/rand. Workload
// keys are generated in the agent's process and never leave it.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate P-256 key: %w", err)
	}
	return k, nil
}

// NewCSR returns a PEM certificate signing request for id, signed by key, in
// the shape Istio's CA and ztunnel use: an empty subject and a single URI SAN
// holding the SPIFFE ID.
func NewCSR(id Identity, key crypto.Signer) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	u, err := id.url()
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		return nil, fmt.Errorf("certs: CSR for %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// checkPublicKey accepts ECDSA P-256 and RSA keys of 2048 to 8192 bits.
func checkPublicKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return fmt.Errorf("ECDSA key on curve %s, want P-256", k.Curve.Params().Name)
		}
		return nil
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("RSA key of %d bits, want %d to %d", n, minRSABits, maxRSABits)
		}
		return nil
	default:
		return fmt.Errorf("key type %T, want ECDSA P-256 or RSA", pub)
	}
}

// checkCAKey accepts the keys a CA (possibly one plugged in from elsewhere)
// may sign with: ECDSA on P-256, P-384 or P-521, and RSA of 2048 to 8192 bits.
func checkCAKey(pub any) error {
	if k, ok := pub.(*ecdsa.PublicKey); ok {
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("ECDSA key on curve %s", k.Curve.Params().Name)
	}
	return checkPublicKey(pub)
}

// randomSerial returns a uniformly random, positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("certs: serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b); n.Sign() > 0 {
			return n, nil
		}
	}
}

// parsePrivateKeyPEM reads the first private key block of data: PKCS #8,
// SEC 1 ("EC PRIVATE KEY") or PKCS #1 ("RSA PRIVATE KEY").
func parsePrivateKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key block")
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", block.Type, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: key type %T cannot sign", block.Type, key)
		}
		if err := checkCAKey(s.Public()); err != nil {
			return nil, err
		}
		return s, nil
	}
}

// ParseCertificatesPEM returns every CERTIFICATE block of data, in order.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// EncodeCertificatesPEM returns the PEM encoding of certs, in order, each
// block ending in a newline.
func EncodeCertificatesPEM(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// LoadRoots reads the mesh's root certificates from a PEM file (--ca-root).
func LoadRoots(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("certs: roots: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("certs: roots: no PEM certificate in %s", path)
	}
	return roots, nil
}

// oidSubjectAltName is the X.509 subjectAltName extension.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// countSANs returns the number of GeneralNames, of any type, in the
// subjectAltName extensions of exts. crypto/x509 drops types it does not model
// (otherName, registeredID, ...), so a strict check must count them itself.
func countSANs(exts []pkix.Extension) (int, error) {
	n := 0
	for _, e := range exts {
		if !e.Id.Equal(oidSubjectAltName) {
			continue
		}
		var seq asn1.RawValue
		rest, err := asn1.Unmarshal(e.Value, &seq)
		if err != nil || len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
			return 0, errors.New("malformed subjectAltName extension")
		}
		b := seq.Bytes
		for len(b) > 0 {
			var gn asn1.RawValue
			b, err = asn1.Unmarshal(b, &gn)
			if err != nil {
				return 0, fmt.Errorf("malformed subjectAltName extension: %w", err)
			}
			n++
		}
	}
	return n, nil
}
