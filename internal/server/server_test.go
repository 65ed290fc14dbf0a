package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
)

func TestCheckListen(t *testing.T) {
	srv, err := Open(context.Background(), Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tests := []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:8474", true},
		{"[::1]:8474", true},
		{"0.0.0.0:8474", false},
		{"192.0.2.10:8474", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			a, err := net.ResolveTCPAddr("tcp", tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.CheckListen(a); (err == nil) != tt.ok {
				t.Fatalf("CheckListen(%s) = %v, want ok=%v", tt.addr, err, tt.ok)
			}
		})
	}
	srv.cfg.Insecure = true
	a, _ := net.ResolveTCPAddr("tcp", "0.0.0.0:8474")
	if err := srv.CheckListen(a); err != nil {
		t.Fatalf("with --insecure-plaintext: %v", err)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and returns its paths and pool.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sharespot test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestTLSAndGracefulStop serves over TLS (HTTP/2), signs a device in, holds
// an inbox stream open, and checks that stopping ends the stream and Serve.
func TestTLSAndGracefulStop(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	srv, err := Open(context.Background(), Config{DataDir: t.TempDir(), TLSCert: certFile, TLSKey: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	c := client.New("https://"+ln.Addr().String(), key, client.Options{HTTPClient: hc})
	if err := c.SignIn(context.Background()); err != nil {
		t.Fatalf("sign in over TLS: %v", err)
	}
	res, err := hc.Get("https://" + ln.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.ProtoMajor != 2 {
		t.Errorf("served HTTP/%d over TLS, want HTTP/2", res.ProtoMajor)
	}
	stream, err := c.Inbox.Subscribe(context.Background(), connect.NewRequest(&sharespotv1.SubscribeRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() || len(stream.Msg().Envelopes) != 0 {
		t.Fatalf("first stream message: %v, %v", stream.Msg(), stream.Err())
	}
	streamDone := make(chan bool, 1)
	go func() { streamDone <- stream.Receive() }()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after stop")
	}
	select {
	case got := <-streamDone:
		if got {
			t.Fatal("stream delivered a message instead of ending")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("inbox stream still open after stop")
	}
}

// TestServeRefusesPlaintextOutsideLoopback: the guard holds in Serve too.
func TestServeRefusesPlaintextOutsideLoopback(t *testing.T) {
	srv, err := Open(context.Background(), Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := srv.Serve(context.Background(), ln); err == nil {
		t.Fatal("Serve accepted cleartext on 0.0.0.0")
	}
}
