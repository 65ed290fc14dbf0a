package api

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"testing"
)

func TestAddressKey(t *testing.T) {
	tests := []struct{ remote, want string }{
		{"192.0.2.7:4242", "192.0.2.7"},
		{"192.0.2.7", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:4242", "192.0.2.7"},
		{"[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:4242", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2::1]:1", "2001:db8:1:2::/64"},
		{"[2001:db8:1:3::1]:1", "2001:db8:1:3::/64"},
		{"[fe80::1%eth0]:80", "fe80::/64"},
		{"@", "@"}, // a unix socket's peer: its own key
	}
	for _, tt := range tests {
		if got := AddressKey(tt.remote); got != tt.want {
			t.Errorf("AddressKey(%q) = %q, want %q", tt.remote, got, tt.want)
		}
	}
}

// countingReader counts the compressed bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestGzipStopsAtTheLimit drives the decompressor as connect-go does (read
// the limit plus one byte, then read on to learn the size): it yields at
// most limit+1 bytes and fails, having read little of the compressed
// input; a message within the limit inflates whole.
func TestGzipStopsAtTheLimit(t *testing.T) {
	const limit = 64 << 10
	gz := func(n int) []byte {
		var b bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
		zw.Write(make([]byte, n))
		zw.Close()
		return b.Bytes()
	}
	bomb := gz(60 << 20)
	dec := &gzipReader{limit: limit + 1}
	src := &countingReader{r: bytes.NewReader(bomb)}
	if err := dec.Reset(src); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	n, err := out.ReadFrom(io.LimitReader(dec, limit+1))
	if err != nil || n != limit+1 {
		t.Fatalf("first read: %d bytes, %v", n, err)
	}
	rest, err := io.Copy(io.Discard, dec)
	if !errors.Is(err, errInflated) || rest != 0 {
		t.Fatalf("reading on: %d more bytes, %v; want none and errInflated", rest, err)
	}
	if src.n > int64(len(bomb))/8 {
		t.Errorf("read %d of the bomb's %d compressed bytes", src.n, len(bomb))
	}

	small := gz(limit)
	if err := dec.Reset(bytes.NewReader(small)); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, dec); err != nil || n != limit {
		t.Fatalf("a message of exactly the limit: %d bytes, %v", n, err)
	}
}
