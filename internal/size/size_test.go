package size

import (
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := map[string]int64{
		"500MB": 500_000_000, "1.5GiB": 1_610_612_736, "2G": 2_000_000_000, "1000000B": 1_000_000, "0.0": 0,
		"10 kb": 10_000, "1KiB": 1024, "0": 0, "3b": 3, " 7 MiB ": 7 << 20, "0.5MB": 500_000,
		"1.5 GiB": 1_610_612_736, "500mb": 500_000_000, "2gb": 2_000_000_000,
	}
	for in, want := range good {
		t.Run(in, func(t *testing.T) {
			if got, err := Parse(in); err != nil || got != want {
				t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
			}
		})
	}
	for _, bad := range []string{"", "MB", "-1MB", "1XB", "1.2.3GB", "1e3MB", "9999999999TB", "lots", "NaN", "inf", "1.5 GiBs",
		"5", "1000000", "0.5", "-0"} {
		t.Run("bad/"+bad, func(t *testing.T) {
			if _, err := Parse(bad); err == nil {
				t.Errorf("Parse(%q) accepted", bad)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 999: "999 B", 1000: "1 kB", 1_500_000: "1.5 MB", 100_000_000: "100 MB", 1_234_567_890: "1.23 GB"} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q, want %q", n, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("1.5GiB")
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := Parse(s); err == nil && n < 0 {
			t.Fatalf("Parse(%q) = %d", s, n)
		}
	})
}

// A bare number is refused with a message that says what to write.
func TestParseBareNumber(t *testing.T) {
	_, err := Parse("5")
	if err == nil || !strings.Contains(err.Error(), "say 5MB, or 5B for bytes") {
		t.Fatalf("Parse(\"5\") = %v, want a hint to write 5MB or 5B", err)
	}
}

func TestFormatPair(t *testing.T) {
	for _, tc := range []struct {
		a, b         int64
		wantA, wantB string
	}{
		{10_000_000, 5_000_000, "10 MB", "5 MB"},
		{10_000_000, 10_000_000, "10 MB", "10 MB"},
		{10_000_000, 9_999_999, "10 MB (10000000 B)", "10 MB (9999999 B)"},
		{1_000_000_000, 1_001_000_000, "1 GB (1000000000 B)", "1 GB (1001000000 B)"},
		{999, 1000, "999 B", "1 kB"},
	} {
		if a, b := FormatPair(tc.a, tc.b); a != tc.wantA || b != tc.wantB {
			t.Errorf("FormatPair(%d, %d) = %q, %q; want %q, %q", tc.a, tc.b, a, b, tc.wantA, tc.wantB)
		}
	}
}
