package guest

import "testing"

// captured from a Debian 12 guest namespace
const netDev = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
  eth0: 21234567   15012    0    0    0     0          0         3   987654    8100    0    0    0     0       0          0
`

func TestParseNetDev(t *testing.T) {
	if n, err := parseNetDev([]byte(netDev), "eth0"); err != nil || n != 21234567+987654 {
		t.Fatalf("eth0: %d, %v", n, err)
	}
	if n, err := parseNetDev([]byte(netDev), "lo"); err != nil || n != 0 {
		t.Fatalf("lo: %d, %v", n, err)
	}
	for _, bad := range []string{"eth1", "eth", ""} {
		if _, err := parseNetDev([]byte(netDev), bad); err == nil {
			t.Errorf("%q found", bad)
		}
	}
	if _, err := parseNetDev([]byte("  eth0: 1 2 3\n"), "eth0"); err == nil {
		t.Error("a short line parsed")
	}
	// This machine's own table parses.
	if _, err := interfaceBytes("lo"); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseNetDev(f *testing.F) {
	f.Add([]byte(netDev), "eth0")
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		n, err := parseNetDev(b, name)
		if err == nil && n < 0 && n > -1<<62 { // overflowed sums are out of reach of real counters; negatives are not
			t.Fatalf("negative count %d", n)
		}
	})
}
