package portal_test

import (
	"fmt"
	"image"
	"image/color"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"

	"github.com/sharespot/sharespot/internal/browsertest"
	"github.com/sharespot/sharespot/internal/portal"
)

// TestQRDecodes: the guest page's QR encoder (static/qr.js, run in
// Chromium) makes codes an independent decoder (ZXing's, ported to Go)
// reads back to the same text, for every version it makes (lengths from
// 1 byte to 666), non-ASCII text included.
func TestQRDecodes(t *testing.T) {
	b := browsertest.Start(t)
	srv := httptest.NewServer(portal.Handler(nil))
	defer srv.Close()
	tab := b.Tab(t)
	if err := chromedp.Do(tab, chromedp.Navigate(srv.URL+portal.Path)); err != nil {
		t.Fatal(err)
	}
	texts := []string{"a", "Sharespot", "é€日本"}
	for _, n := range []int{14, 26, 42, 62, 84, 106, 122, 152, 180, 213, 251, 287, 331, 362, 412, 450, 504, 560, 624, 666} {
		texts = append(texts, strings.Repeat("[Interface]\nPrivateKey = ", n/20+1)[:n])
	}
	for _, text := range texts {
		js := fmt.Sprintf(`SharespotQR.encode(%q)`, text)
		m, err := chromedp.Run(tab, chromedp.Evaluate[[][]int](js))
		if err != nil {
			t.Fatalf("%d bytes: %v", len(text), err)
		}
		got, err := decodeQR(m)
		if err != nil {
			t.Fatalf("%d bytes (%d modules a side): %v", len(text), len(m), err)
		}
		if got != text {
			t.Fatalf("%d bytes: decoded %q", len(text), got)
		}
	}
}

// decodeQR draws modules four pixels each with a quiet zone and decodes
// them with ZXing's QR reader.
func decodeQR(m [][]int) (string, error) {
	const px, quiet = 4, 4
	n := len(m)
	img := image.NewGray(image.Rect(0, 0, (n+2*quiet)*px, (n+2*quiet)*px))
	for y := range img.Bounds().Dy() {
		for x := range img.Bounds().Dx() {
			r, c := y/px-quiet, x/px-quiet
			v := color.Gray{255}
			if r >= 0 && c >= 0 && r < n && c < n && m[r][c] == 1 {
				v = color.Gray{0}
			}
			img.SetGray(x, y, v)
		}
	}
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		return "", err
	}
	res, err := qrcode.NewQRCodeReader().Decode(bmp, map[gozxing.DecodeHintType]any{gozxing.DecodeHintType_PURE_BARCODE: true})
	if err != nil {
		return "", err
	}
	return res.GetText(), nil
}
