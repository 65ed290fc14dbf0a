package protocol

import (
	"math"
	"testing"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
)

func TestPrice(t *testing.T) {
	tests := []struct {
		name               string
		bytes, price, unit int64
		want               int64
		wantErr            bool
	}{
		{"exact units", 100_000_000, 10, 1_000_000, 1000, false},
		{"part of a unit rounds up", 1_500_001, 10, 1_000_000, 16, false},
		{"one byte costs a whole cent", 1, 10, 1_000_000, 1, false},
		{"free", 5_000_000, 0, 1_000_000, 0, false},
		{"zero bytes", 0, 10, 1_000_000, 0, false},
		{"no overflow in the product", 1 << 50, 1 << 20, 1 << 30, 1 << 40, false},
		{"result overflows", math.MaxInt64, math.MaxInt64, 1, 0, true},
		{"negative bytes", -1, 10, 1, 0, true},
		{"zero unit", 1, 10, 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Price(tt.bytes, tt.price, tt.unit)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("Price(%d, %d, %d) = %d, %v; want %d, err=%v", tt.bytes, tt.price, tt.unit, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestMulDivRoundsDownForSettlement(t *testing.T) {
	// A host's share of 1600 for 120 of 150 MB: exact.
	if got, _ := MulDiv(1600, 120, 150, false); got != 1280 {
		t.Fatalf("got %d", got)
	}
	// 100 for 1 of 3 bytes: the host gets 33, the guest keeps the rest.
	if got, _ := MulDiv(100, 1, 3, false); got != 33 {
		t.Fatalf("got %d", got)
	}
	if got, _ := MulDiv(100, 1, 3, true); got != 34 {
		t.Fatalf("got %d rounding up", got)
	}
}

func TestTariffPrice(t *testing.T) {
	tf := &sharespotv1.Tariff{Currency: "EUR", PriceMinor: 10, UnitBytes: 1_000_000, TopupPriceMinor: 12}
	if got, err := TariffPrice(tf, 5_000_000, false); err != nil || got != 50 {
		t.Errorf("first purchase: %d, %v; want 50", got, err)
	}
	if got, err := TariffPrice(tf, 5_000_000, true); err != nil || got != 60 {
		t.Errorf("top-up: %d, %v; want 60", got, err)
	}
	if _, err := TariffPrice(&sharespotv1.Tariff{PriceMinor: 10}, 1, false); err == nil {
		t.Error("a tariff without a unit priced something")
	}
}

func TestPromptLevel(t *testing.T) {
	const MB = 1_000_000
	tests := []struct {
		name         string
		warn, bought int64
		want         int64
	}{
		{"a purchase well above the warning level: the warning level", 5 * MB, 100 * MB, 5 * MB},
		{"a purchase at the warning level: half of it", 2 * MB, 2 * MB, MB},
		{"a purchase below the warning level: half of it", 5 * MB, 2 * MB, MB},
		{"twice the warning level: the warning level", MB, 2 * MB, MB},
		{"no warning level: no prompt", 0, 2 * MB, 0},
		{"one byte bought: prompted at the last byte", MB, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PromptLevel(tt.warn, tt.bought); got != tt.want {
				t.Fatalf("PromptLevel(%d, %d) = %d, want %d", tt.warn, tt.bought, got, tt.want)
			}
		})
	}
}
