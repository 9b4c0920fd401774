package lab

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is the lab's certificate authority and the keys its components need, all written under dir.
type pki struct {
	dir                              string
	caCert                           *x509.Certificate
	caKey                            crypto.Signer
	CAFile                           string
	ServingCertFile                  string
	ServingKeyFile                   string
	AdminCertFile                    string
	AdminKeyFile                     string
	ServiceAccountKey                string // one ECDSA key: the apiserver's signing key and the controllers' private key
	adminCertPEM, adminKeyPEM, caPEM []byte
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62)) }

func writePEM(path, kind string, der []byte, mode os.FileMode) ([]byte, error) {
	data := pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
	return data, os.WriteFile(path, data, mode)
}

func writeKey(path string, key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

// newPKI makes a CA valid for a year, a serving certificate for the apiserver on loopback, an admin client
// certificate (O=system:masters) and the service-account key.
func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	now := time.Now().Add(-time.Hour)
	caKey, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	caTemplate := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: "rollout-lab-ca"}, NotBefore: now, NotAfter: now.AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, BasicConstraintsValid: true, IsCA: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	if p.caCert, err = x509.ParseCertificate(caDER); err != nil {
		return nil, err
	}
	p.caKey = caKey
	p.CAFile = filepath.Join(dir, "ca.crt")
	if p.caPEM, err = writePEM(p.CAFile, "CERTIFICATE", caDER, 0o644); err != nil {
		return nil, err
	}
	if _, err := writeKey(filepath.Join(dir, "ca.key"), caKey); err != nil {
		return nil, err
	}
	p.ServingCertFile, p.ServingKeyFile = filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")
	if _, _, err := p.issue(p.ServingCertFile, p.ServingKeyFile, pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}); err != nil {
		return nil, err
	}
	p.AdminCertFile, p.AdminKeyFile = filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	if p.adminCertPEM, p.adminKeyPEM, err = p.issue(p.AdminCertFile, p.AdminKeyFile,
		pkix.Name{CommonName: "rollout-lab-admin", Organization: []string{"system:masters"}}, x509.ExtKeyUsageClientAuth, nil, nil); err != nil {
		return nil, err
	}
	saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	p.ServiceAccountKey = filepath.Join(dir, "sa.key")
	if _, err := writeKey(p.ServiceAccountKey, saKey); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pki) issue(certFile, keyFile string, subject pkix.Name, usage x509.ExtKeyUsage, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	template := &x509.Certificate{SerialNumber: sn, Subject: subject, NotBefore: p.caCert.NotBefore, NotAfter: p.caCert.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		DNSNames: dnsNames, IPAddresses: ips}
	der, err := x509.CreateCertificate(rand.Reader, template, p.caCert, key.Public(), p.caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", subject.CommonName, err)
	}
	if certPEM, err = writePEM(certFile, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = writeKey(keyFile, key); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}
