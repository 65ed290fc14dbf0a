package browsertest_test

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/sharespot/sharespot/internal/browsertest"
)

func TestFindHonoursTheEnvironment(t *testing.T) {
	t.Setenv(browsertest.ChromiumEnv, filepath.Join(t.TempDir(), "no-such-browser"))
	if p, err := browsertest.Find(); err == nil {
		t.Fatalf("Find = %s with %s naming a missing file", p, browsertest.ChromiumEnv)
	}
}

// TestScreenshotSize: a page is rendered and written as a PNG exactly as
// wide as asked.
func TestScreenshotSize(t *testing.T) {
	b := browsertest.Start(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Write([]byte(`<!doctype html><meta name="viewport" content="width=device-width"><h1 id="h">hello</h1>`))
	}))
	defer srv.Close()
	tab := b.Tab(t)
	if err := chromedp.Do(tab, chromedp.Navigate(srv.URL)); err != nil {
		t.Fatal(err)
	}
	if h, err := chromedp.Run(tab, chromedp.Text(chromedp.ID("h"))); err != nil || h != "hello" {
		t.Fatalf("heading %q, %v", h, err)
	}
	dir := t.TempDir()
	t.Setenv(browsertest.ScreenshotsEnv, dir)
	for _, c := range []struct {
		name   string
		w, h   int64
		mobile bool
	}{{"phone", 390, 844, true}, {"desktop", 1280, 900, false}} {
		browsertest.Screenshot(t, tab, c.name, c.w, c.h, c.mobile)
		png, err := os.ReadFile(filepath.Join(dir, c.name+".png"))
		if err != nil {
			t.Fatal(err)
		}
		if len(png) < 24 || !bytes.Equal(png[:8], []byte("\x89PNG\r\n\x1a\n")) {
			t.Fatalf("%s: not a PNG", c.name)
		}
		if w, h := binary.BigEndian.Uint32(png[16:20]), binary.BigEndian.Uint32(png[20:24]); int64(w) != c.w || int64(h) < c.h {
			t.Errorf("%s: %dx%d, want %d wide and at least %d high", c.name, w, h, c.w, c.h)
		}
	}
}
