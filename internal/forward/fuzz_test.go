package forward

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// FuzzHandshake feeds the local handshakes any bytes: they return a
// destination or an error, and never panic or read past what they need.
func FuzzHandshake(f *testing.F) {
	f.Add([]byte{5, 1, 0, 5, 1, 0, 3, 9, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0, 80})
	f.Add([]byte{5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1, 1, 187})
	f.Add([]byte("CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"))
	f.Add([]byte("GET http://example.org/a?b HTTP/1.1\r\nHost: example.org\r\nProxy-Connection: keep-alive\r\n\r\n"))
	f.Add([]byte("POST http://[::1]:8080/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		var dest string
		var err error
		if len(b) > 0 && b[0] == 5 {
			dest, err = readSOCKS5(r, io.Discard)
		} else {
			dest, _, _, err = readHTTP(r)
		}
		if err == nil && dest == "" {
			t.Fatal("no error and no destination")
		}
	})
}
