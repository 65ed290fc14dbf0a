package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
)

// LoadCAFile returns the system's trusted roots plus the PEM certificates
// in file: what a client needs to reach a server whose certificate a
// self-hosted CA signed. (SSL_CERT_FILE replaces the system roots
// instead; see docs/router.md.)
func LoadCAFile(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("client: read the CA file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("client: the CA file " + file + " holds no PEM certificate (want -----BEGIN CERTIFICATE-----)")
	}
	return pool, nil
}

// NewHTTPClientTrusting is NewHTTPClient trusting roots for TLS.
func NewHTTPClientTrusting(roots *x509.CertPool) *http.Client {
	hc := NewHTTPClient()
	hc.Transport.(*http.Transport).TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	return hc
}
