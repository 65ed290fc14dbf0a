package loadgen

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/sharespot/sharespot/internal/atomicfile"
)

// Names of the throwaway certificate and key SelfSignedTLS writes.
const (
	BenchCertFile = "bench-tls-cert.pem"
	BenchKeyFile  = "bench-tls-key.pem"
)

// SelfSignedTLS writes a throwaway self-signed ECDSA P-256 certificate
// for 127.0.0.1, ::1 and localhost, valid for a day, into dir (the key
// file 0600), for a server the bench starts itself. It returns the two
// files and a client configuration that trusts exactly that certificate.
func SelfSignedTLS(dir string) (certFile, keyFile string, client *tls.Config, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, fmt.Errorf("loadgen: generate a TLS key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return "", "", nil, fmt.Errorf("loadgen: certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "sharespot bench (throwaway)"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", nil, fmt.Errorf("loadgen: create a TLS certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, fmt.Errorf("loadgen: encode the TLS key: %w", err)
	}
	certFile, keyFile = filepath.Join(dir, BenchCertFile), filepath.Join(dir, BenchKeyFile)
	if err := atomicfile.Write(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", nil, fmt.Errorf("loadgen: write the TLS key: %w", err)
	}
	if err := atomicfile.Write(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return "", "", nil, fmt.Errorf("loadgen: write the TLS certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "", "", nil, fmt.Errorf("loadgen: parse the TLS certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}

// ProbeTransport asks the server at url for /healthz with a client as
// the bench's devices have (HTTPClientTLS with tc) and names the
// transport they get: "h2c" (HTTP/2 in cleartext), or the TLS version
// ("TLS 1.3"), followed by the protocol when it is not HTTP/2.
func ProbeTransport(ctx context.Context, url string, tc *tls.Config) (string, error) {
	hc := HTTPClientTLS(nil, tc)
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(url, "/")+"/healthz", nil)
	if err != nil {
		return "", fmt.Errorf("loadgen: probe the server's transport: %w", err)
	}
	res, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("loadgen: probe the server's transport: %w", err)
	}
	res.Body.Close()
	if res.TLS == nil {
		if res.ProtoMajor == 2 {
			return "h2c", nil
		}
		return res.Proto, nil
	}
	name := tls.VersionName(res.TLS.Version)
	if res.ProtoMajor != 2 {
		name += ", " + res.Proto
	}
	return name, nil
}

// over is " over TRANSPORT" for a report's first line ("" if unknown).
func over(transport string) string {
	if transport == "" {
		return ""
	}
	return " over " + transport
}
