package kubepki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"time"
)

// PKI is the key material of one cluster, all PEM-encoded: a node's, and
// internal/kubetest's API-server-only clusters.
type PKI struct {
	CACert, CAKey           []byte // signs every certificate below
	ServingCert, ServingKey []byte // kube-apiserver's TLS certificate
	AdminCert, AdminKey     []byte // system:masters: the test client, controller manager, scheduler, kube-proxy
	NodeCert, NodeKey       []byte // system:node:<name> in system:nodes: the kubelet
	KubeletClientCert       []byte // kube-apiserver → kubelet (logs, exec)
	KubeletClientKey        []byte
	SAKey, SAPub            []byte // service-account token signing key pair
}

// NewPKI generates fresh keys and certificates valid for 30 days. apiIPs
// are the serving certificate's IP SANs (the bind address and the first
// service IP).
func NewPKI(nodeName string, apiIPs []net.IP) (*PKI, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ferry-kubenode-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	caKeyDER, err := x509.MarshalECPrivateKey(caKey)
	if err != nil {
		return nil, err
	}
	p := &PKI{CACert: pemBlock("CERTIFICATE", caDER), CAKey: pemBlock("EC PRIVATE KEY", caKeyDER)}

	serial := int64(1)
	leaf := func(subject pkix.Name, usage x509.ExtKeyUsage, ips []net.IP, dns []string) (cert, key []byte, err error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		serial++
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      subject,
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(30 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
			DNSNames:     dns,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kd, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, nil, err
		}
		return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", kd), nil
	}
	p.ServingCert, p.ServingKey, err = leaf(pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		append([]net.IP{net.IPv4(127, 0, 0, 1)}, apiIPs...),
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	p.AdminCert, p.AdminKey, err = leaf(pkix.Name{CommonName: "ferry-kubenode-admin", Organization: []string{"system:masters"}},
		x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("admin certificate: %w", err)
	}
	p.NodeCert, p.NodeKey, err = leaf(pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
		x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("node certificate: %w", err)
	}
	p.KubeletClientCert, p.KubeletClientKey, err = leaf(pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
		x509.ExtKeyUsageClientAuth, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("kubelet client certificate: %w", err)
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	kd, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	p.SAKey, p.SAPub = pemBlock("EC PRIVATE KEY", kd), pemBlock("PUBLIC KEY", pub)
	return p, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
