package session

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/seal"
)

// FuzzCheckGuestKeys feeds access requests, as any guest may send them
// (protobuf bytes), to the check of their HPKE public keys: it must never
// panic, and what it accepts must hold 1 to 8 keys, each valid for its
// suite, one of them in a suite the server accepts.
func FuzzCheckGuestKeys(f *testing.F) {
	e := New(nil, nil, nil, nil, time.Now, DefaultConfig(), nil)
	k, err := seal.GenerateKey(seal.Preset)
	if err != nil {
		f.Fatal(err)
	}
	for _, req := range []*sharespotv1.RequestAccessRequest{
		{HotspotId: "hs_x", Bytes: 1, GuestKeys: []*sharespotv1.GuestKey{{Suite: string(seal.Preset), PublicKey: k.PublicKey()}}},
		{GuestKeys: []*sharespotv1.GuestKey{{Suite: string(seal.Preset), PublicKey: make([]byte, 32)}}},
		{GuestKeys: []*sharespotv1.GuestKey{{Suite: "rot13", PublicKey: []byte{1}}}},
		{},
	} {
		b, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(sharespotv1.RequestAccessRequest)
		if proto.Unmarshal(b, req) != nil {
			return
		}
		if _, err := e.CheckGuestKeys(req.GuestKeys); err != nil {
			return
		}
		if n := len(req.GuestKeys); n < 1 || n > 8 {
			t.Fatalf("accepted %d keys", n)
		}
		if _, err := e.chooseSuite(req.GuestKeys); err != nil {
			t.Fatalf("accepted keys in no accepted suite: %v", err)
		}
		for i, k := range req.GuestKeys {
			if err := seal.CheckPublicKey(seal.Suite(k.Suite), k.PublicKey); err != nil {
				t.Fatalf("accepted key %d: %v", i, err)
			}
		}
	})
}
