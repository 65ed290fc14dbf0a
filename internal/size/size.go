// Package size reads and writes data sizes as people type them: 500MB,
// 1.5GiB, 2G, 1000000B. Decimal units are powers of 1000, binary units
// (KiB, MiB, …) powers of 1024. A number needs its unit (B for bytes):
// "5" is refused rather than read as five bytes, which is never what was
// meant; only 0 may stand alone.
package size

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var units = map[string]float64{
	"b": 1,
	"k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9, "t": 1e12, "tb": 1e12,
	"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}

// Parse reads a size such as "500MB", "1.5GiB" or "300B" into bytes.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := strings.IndexFunc(t, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := t, ""
	if i >= 0 {
		num, unit = t[:i], strings.TrimSpace(t[i:])
	}
	mult, ok := units[strings.ToLower(unit)]
	if num == "" || (!ok && unit != "") {
		return 0, fmt.Errorf("size %q: want a number and a unit such as 500MB, 1.5GiB or 2G", s)
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("size %q: %q is not a non-negative number", s, num)
	}
	if unit == "" {
		if f != 0 {
			return 0, fmt.Errorf("size %q has no unit: say %sMB, or %sB for bytes", s, num, num)
		}
		mult = 1
	}
	v := math.Round(f * mult)
	if v > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(v), nil
}

// Format writes bytes with decimal units: 1500000 → "1.5 MB".
func Format(n int64) string {
	names := []string{"B", "kB", "MB", "GB", "TB", "PB"}
	if n < 1000 && n > -1000 {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	i := 0
	for math.Abs(f) >= 1000 && i < len(names)-1 {
		f /= 1000
		i++
	}
	t := strings.TrimRight(strings.TrimRight(strconv.FormatFloat(f, 'f', 2, 64), "0"), ".")
	return t + " " + names[i]
}

// FormatPair writes two sizes a person compares ("the smallest purchase
// is 10 MB; you asked for 5 MB"): each as Format does, with the exact
// byte counts added when the two would otherwise read the same (10 MB
// and 9999999 B are "10 MB (10000000 B)" and "10 MB (9999999 B)").
func FormatPair(a, b int64) (string, string) {
	fa, fb := Format(a), Format(b)
	if fa == fb && a != b {
		return fmt.Sprintf("%s (%d B)", fa, a), fmt.Sprintf("%s (%d B)", fb, b)
	}
	return fa, fb
}
