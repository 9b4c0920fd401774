package controlplane

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
	CAFile                           string
	ServingCertFile                  string
	ServingKeyFile                   string
	AdminCertFile                    string
	AdminKeyFile                     string
	ServiceAccountKey                string // one ECDSA key: the apiserver's signing key and the controllers' private key
	adminCertPEM, adminKeyPEM, caPEM []byte
	// etcd has its own CA, as kubeadm sets it up: only certificates it issued (etcd's own and the apiserver's
	// etcd client) open etcd, not the admin's kubeconfig nor anything else the lab CA signs.
	EtcdCAFile, EtcdCertFile, EtcdKeyFile       string
	APIServerEtcdCertFile, APIServerEtcdKeyFile string
	ca                                          *authority
}

// issueClient issues a client certificate of the lab CA for subject, written as name.crt and name.key.
func (p *pki) issueClient(name string, subject pkix.Name) (certPEM, keyPEM []byte, err error) {
	return p.ca.issue(filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key"), subject, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil)
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
// certificate (O=system:masters), etcd's CA with etcd's certificate and the apiserver's etcd client certificate,
// and the service-account key.
func newPKI(dir string, nodeNetworkIP net.IP) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	ca, err := newCA(dir, "ca", "rollout-lab-ca")
	if err != nil {
		return nil, err
	}
	p.CAFile, p.caPEM, p.ca = ca.file, ca.pem, ca
	etcdCA, err := newCA(dir, "etcd-ca", "rollout-lab-etcd-ca")
	if err != nil {
		return nil, err
	}
	p.EtcdCAFile = etcdCA.file
	loopback := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	// etcd's certificate serves its clients and authenticates it to its peer port.
	p.EtcdCertFile, p.EtcdKeyFile = filepath.Join(dir, "etcd.crt"), filepath.Join(dir, "etcd.key")
	if _, _, err := etcdCA.issue(p.EtcdCertFile, p.EtcdKeyFile, pkix.Name{CommonName: "rollout-lab-etcd"},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, []string{"localhost"}, loopback); err != nil {
		return nil, err
	}
	p.APIServerEtcdCertFile, p.APIServerEtcdKeyFile = filepath.Join(dir, "apiserver-etcd-client.crt"), filepath.Join(dir, "apiserver-etcd-client.key")
	if _, _, err := etcdCA.issue(p.APIServerEtcdCertFile, p.APIServerEtcdKeyFile, pkix.Name{CommonName: "kube-apiserver-etcd-client"},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil); err != nil {
		return nil, err
	}
	p.ServingCertFile, p.ServingKeyFile = filepath.Join(dir, "apiserver.crt"), filepath.Join(dir, "apiserver.key")
	servingIPs := loopback
	if nodeNetworkIP != nil {
		servingIPs = append(append([]net.IP{}, loopback...), nodeNetworkIP)
	}
	if _, _, err := ca.issue(p.ServingCertFile, p.ServingKeyFile, pkix.Name{CommonName: "kube-apiserver"}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}, servingIPs); err != nil {
		return nil, err
	}
	p.AdminCertFile, p.AdminKeyFile = filepath.Join(dir, "admin.crt"), filepath.Join(dir, "admin.key")
	if p.adminCertPEM, p.adminKeyPEM, err = ca.issue(p.AdminCertFile, p.AdminKeyFile,
		pkix.Name{CommonName: "rollout-lab-admin", Organization: []string{"system:masters"}}, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil); err != nil {
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

// authority is a CA of the lab, valid for a year.
type authority struct {
	cert *x509.Certificate
	key  crypto.Signer
	file string
	pem  []byte
}

func newCA(dir, name, commonName string) (*authority, error) {
	now := time.Now().Add(-time.Hour)
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	template := &x509.Certificate{SerialNumber: sn, Subject: pkix.Name{CommonName: commonName}, NotBefore: now, NotAfter: now.AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key)
	if err != nil {
		return nil, err
	}
	ca := &authority{key: key, file: filepath.Join(dir, name+".crt")}
	if ca.cert, err = x509.ParseCertificate(der); err != nil {
		return nil, err
	}
	if ca.pem, err = writePEM(ca.file, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	if _, err := writeKey(filepath.Join(dir, name+".key"), key); err != nil {
		return nil, err
	}
	return ca, nil
}

func (ca *authority) issue(certFile, keyFile string, subject pkix.Name, usages []x509.ExtKeyUsage, dnsNames []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	template := &x509.Certificate{SerialNumber: sn, Subject: subject, NotBefore: ca.cert.NotBefore, NotAfter: ca.cert.NotAfter,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, ExtKeyUsage: usages,
		DNSNames: dnsNames, IPAddresses: ips}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, key.Public(), ca.key)
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
