package client_test

import (
	"crypto/ed25519"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"connectrpc.com/connect"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/buildinfo"
	"github.com/sharespot/sharespot/internal/client"
)

// TestUserAgent: unary calls and streams name the build in their
// User-Agent (sharespot/VERSION (REVISION)), not connect-go's default.
func TestUserAgent(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]string{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = r.Header.Get("User-Agent")
		mu.Unlock()
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	_, key, _ := ed25519.GenerateKey(nil)
	c := client.New(srv.URL, key, client.Options{})
	c.Auth.Challenge(t.Context(), connect.NewRequest(&sharespotv1.ChallengeRequest{}))
	if s, err := c.Inbox.Subscribe(t.Context(), connect.NewRequest(&sharespotv1.SubscribeRequest{})); err == nil {
		s.Receive()
		s.Close()
	}
	want := buildinfo.UserAgent()
	for _, path := range []string{"/sharespot.v1.AuthService/Challenge", "/sharespot.v1.InboxService/Subscribe"} {
		mu.Lock()
		got, ok := seen[path]
		mu.Unlock()
		if !ok {
			t.Errorf("%s: never called", path)
		} else if got != want {
			t.Errorf("%s: User-Agent %q, want %q", path, got, want)
		}
	}
}
