package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/ferrymesh/ferry/certs"
)

// pki holds the PEM files every peer uses: the mesh root (Ferry's local CA,
// which the agents sign their own certificates with) and one leaf signed by
// it, with a SPIFFE URI and DNS name "localhost", for the other peers and the
// handshake client.
type pki struct {
	caCert, caKey string // root certificate and key
	cert, key     string // leaf chain (leaf first, no root) and key
	combined      string // leaf chain followed by its key (HAProxy, ghostunnel)
}

// trustDomain and the leaf's identity.
const trustDomain = "cluster.local"

var leafID = certs.Identity{TrustDomain: trustDomain, Namespace: "bench", ServiceAccount: "client"}

func newPKI(dir string) (*pki, error) {
	caDir := filepath.Join(dir, "ca")
	if err := certs.InitCA(caDir); err != nil {
		return nil, err
	}
	p := &pki{
		caCert: filepath.Join(caDir, certs.RootCertFile), caKey: filepath.Join(caDir, certs.RootKeyFile),
		cert: filepath.Join(dir, "leaf.pem"), key: filepath.Join(dir, "leaf-key.pem"), combined: filepath.Join(dir, "leaf-combined.pem"),
	}
	rootPEM, err := os.ReadFile(p.caCert)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(p.caKey)
	if err != nil {
		return nil, err
	}
	rb, _ := pem.Decode(rootPEM)
	kb, _ := pem.Decode(keyPEM)
	if rb == nil || kb == nil {
		return nil, errors.New("pki: CA files are not PEM")
	}
	root, err := x509.ParseCertificate(rb.Bytes)
	if err != nil {
		return nil, err
	}
	rootKey, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(leafID.String())
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(48 * time.Hour),
		DNSNames:              []string{"localhost"},
		URIs:                  []*url.URL{u},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("pki: leaf: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certOut := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyOut := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	for path, data := range map[string][]byte{p.cert: certOut, p.key: keyOut, p.combined: append(append([]byte{}, certOut...), keyOut...)} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}
