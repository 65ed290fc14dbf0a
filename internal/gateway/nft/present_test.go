package nft

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sharespot/sharespot/internal/seal"
)

// TestPresent checks the guest's side of admission against a stand-in
// endpoint: what it sends, and how it reads success and refusal.
func TestPresent(t *testing.T) {
	code := make([]byte, seal.AccessCodeSize)
	code[0] = 7
	for _, tc := range []struct {
		name    string
		status  int
		wantErr string
	}{
		{"admitted", http.StatusOK, ""},
		{"wrong_code", http.StatusForbidden, "403"},
		{"address_taken", http.StatusConflict, "409"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPost || r.URL.Path != "/admit" || r.PostFormValue("session") != "s1" ||
					r.PostFormValue("code") != seal.FormatCode(code) {
					http.Error(w, "unexpected request", http.StatusTeapot)
					return
				}
				w.WriteHeader(tc.status)
				w.Write([]byte("online 10.0.0.2\n"))
			}))
			defer srv.Close()
			msg, err := Present(context.Background(), nil, strings.TrimPrefix(srv.URL, "http://"), "s1", code)
			if tc.wantErr == "" {
				if err != nil || msg != "online 10.0.0.2" {
					t.Fatalf("Present = %q, %v", msg, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Present error = %v, want %s", err, tc.wantErr)
			}
		})
	}
}
