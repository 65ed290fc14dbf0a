package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strconv"
	"testing"

	"github.com/sharespot/sharespot/internal/gateway"
	"github.com/sharespot/sharespot/internal/seal"
)

// fuzzCode is the access code of the fuzzers' session "sess"; otherCode
// is well formed but wrong.
var (
	fuzzCode  = bytes.Repeat([]byte{0x42}, seal.AccessCodeSize)
	otherCode = seal.FormatCode(bytes.Repeat([]byte{0x43}, seal.AccessCodeSize))
)

// fuzzProxy returns a proxy (not serving) with session "sess" admitted,
// and an auth function that records whether it accepted.
func fuzzProxy(f *testing.F) *Proxy {
	p, err := New(Config{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { p.Close() })
	if err := p.Admit(context.Background(), gateway.Grant{SessionID: "sess", Credential: fuzzCode, Quota: 1 << 20}); err != nil {
		f.Fatal(err)
	}
	return p
}

// recordingAuth authenticates against p and remembers the last accepted
// credentials.
type recordingAuth struct {
	p          *Proxy
	ok         bool
	user, pass string
}

func (a *recordingAuth) auth(user, pass string) bool {
	a.ok = a.p.authenticate(user, pass) != nil
	if a.ok {
		a.user, a.pass = user, pass
	}
	return a.ok
}

// checkAdmission fails unless an accepted handshake carried the session's
// real credentials and a dialable host:port.
func checkAdmission(t *testing.T, a *recordingAuth, target string) {
	if !a.ok || a.user != "sess" {
		t.Fatalf("admitted without credentials (user %q)", a.user)
	}
	if code, err := seal.ParseCode(a.pass); err != nil || !bytes.Equal(code, fuzzCode) {
		t.Fatalf("admitted with password %q", a.pass)
	}
	host, port, err := net.SplitHostPort(target)
	if err != nil || host == "" {
		t.Fatalf("target %q: %v", target, err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		t.Fatalf("target %q: bad port", target)
	}
}

func socksLogin(user, pass string) []byte {
	b := []byte{socksVersion, 1, methodUserPass, authVersion, byte(len(user))}
	b = append(b, user...)
	b = append(b, byte(len(pass)))
	return append(b, pass...)
}

func FuzzSOCKS5Handshake(f *testing.F) {
	p := fuzzProxy(f)
	pass := seal.FormatCode(fuzzCode)
	login := socksLogin("sess", pass)
	for _, req := range [][]byte{
		{5, 1, 0, 1, 93, 184, 216, 34, 0, 80},
		append([]byte{5, 1, 0, 3, 11}, "example.com\x01\xbb"...),
		append([]byte{5, 1, 0, 4}, append(bytes.Repeat([]byte{0x20}, 16), 0, 80)...),
		{5, 2, 0, 1, 1, 2, 3, 4, 0, 80},
		{5, 1, 0, 9},
	} {
		f.Add(append(bytes.Clone(login), req...))
	}
	f.Add(append(socksLogin("sess", "x"), 5, 1, 0, 1, 1, 2, 3, 4, 0, 80))
	f.Add(append(socksLogin("sess", otherCode), 5, 1, 0, 1, 1, 2, 3, 4, 0, 80))
	f.Add(append(socksLogin("other", pass), 5, 1, 0, 1, 1, 2, 3, 4, 0, 80))
	f.Add([]byte{5, 1, 0})
	f.Add([]byte{5, 0})
	f.Add([]byte{5, 255})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &recordingAuth{p: p}
		var out bytes.Buffer
		target, err := readSOCKS5(bufio.NewReader(bytes.NewReader(data)), &out, a.auth)
		if err != nil {
			if target != "" {
				t.Fatalf("error %v with target %q", err, target)
			}
			return
		}
		checkAdmission(t, a, target)
		if !bytes.Equal(out.Bytes(), []byte{socksVersion, methodUserPass, authVersion, authStatusOK}) {
			t.Fatalf("answers %x before an accepted request", out.Bytes())
		}
	})
}

func FuzzHTTPConnect(f *testing.F) {
	p := fuzzProxy(f)
	cred := base64.StdEncoding.EncodeToString([]byte("sess:" + seal.FormatCode(fuzzCode)))
	f.Add([]byte("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic " + cred + "\r\n\r\n"))
	f.Add([]byte("CONNECT [2001:db8::1]:443 HTTP/1.1\r\nProxy-Authorization: basic " + cred + "\r\n\r\nearly"))
	f.Add([]byte("CONNECT example.com:443 HTTP/1.0\r\n\r\n"))
	f.Add([]byte("CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: Basic " +
		base64.StdEncoding.EncodeToString([]byte("sess:"+otherCode)) + "\r\n\r\n"))
	f.Add([]byte("GET http://example.com/ HTTP/1.1\r\nProxy-Authorization: Basic " + cred + "\r\n\r\n"))
	f.Add([]byte("CONNECT example.com:0 HTTP/1.1\r\nProxy-Authorization: Basic " + cred + "\r\n\r\n"))
	f.Add([]byte("CONNECT /x HTTP/1.1\r\nProxy-Authorization: Basic c2Vzczp4\r\n\r\n"))
	f.Add([]byte("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"))
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &recordingAuth{p: p}
		lr := &io.LimitedReader{R: bytes.NewReader(data), N: maxHandshake}
		h := &httpHandshake{lr: lr}
		var out bytes.Buffer
		target, err := h.read(bufio.NewReaderSize(lr, 4096), &out, a.auth)
		if err != nil {
			var he *httpError
			if !errors.As(err, &he) || !bytes.HasPrefix(out.Bytes(), []byte("HTTP/1.1 "+strconv.Itoa(he.status)+" ")) {
				t.Fatalf("refusal %v answered %q", err, out.Bytes())
			}
			if he.status != 407 && he.status != 400 && he.status != 431 && !a.ok {
				t.Fatalf("status %d before authentication", he.status)
			}
			return
		}
		checkAdmission(t, a, target)
		if out.Len() != 0 {
			t.Fatalf("answered %q before the tunnel opened", out.Bytes())
		}
	})
}
