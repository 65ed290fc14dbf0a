package tunnel

import (
	"net/netip"
	"testing"
)

// TestConfRoundTrip: what Conf writes, ParseConf reads back; a line it
// does not know is refused.
func TestConfRoundTrip(t *testing.T) {
	c := Config{Endpoint: "192.0.2.7:51820", Address: netip.MustParseAddr("10.77.0.9"), Gateway: netip.MustParseAddr("10.77.0.1")}
	c.Key[0], c.PublicKey[31] = 7, 9
	got, err := ParseConf(c.Conf())
	if err != nil || got != c {
		t.Fatalf("ParseConf(Conf()) = %+v, %v; want %+v", got, err, c)
	}
	if _, err := ParseConf(c.Conf() + "PostUp = rm -rf /\n"); err == nil {
		t.Fatal("a PostUp line was taken")
	}
	if _, err := ParseConf("[Interface]\nPrivateKey = AAAA\n"); err == nil {
		t.Fatal("a short key was taken")
	}
}
