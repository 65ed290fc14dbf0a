package client_test

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sharespot/sharespot/internal/client"
)

// A server whose certificate only the CA file vouches for is reached with
// it and refused without it; a file with no certificate is refused.
func TestCAFile(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	srv.EnableHTTP2 = true // the client speaks HTTP/2 only
	srv.StartTLS()
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := client.NewHTTPClient().Get(srv.URL); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA file: %v, want a certificate error", err)
	}
	roots, err := client.LoadCAFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.NewHTTPClientTrusting(roots).Get(srv.URL)
	if err != nil {
		t.Fatalf("with the CA file: %v", err)
	}
	res.Body.Close()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not a certificate"), 0o644)
	if _, err := client.LoadCAFile(bad); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("a file without certificates: %v", err)
	}
}
