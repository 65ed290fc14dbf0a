// Package browsertest runs a real headless Chromium for tests, driven by
// chromedp: it finds the browser, starts it (headless=new, --no-sandbox
// when running as root), and takes screenshots at a given window size when
// SHARESPOT_SCREENSHOTS names a directory. Where no Chromium is installed a
// test skips, except in CI (CI=true), where it fails: a skipped browser
// test proves nothing.
package browsertest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// ScreenshotsEnv names the directory screenshots are written to; unset,
// Screenshot does nothing.
const ScreenshotsEnv = "SHARESPOT_SCREENSHOTS"

// ChromiumEnv may name the browser's executable.
const ChromiumEnv = "SHARESPOT_CHROMIUM"

// candidates are the names Chromium goes by on Debian, Ubuntu and others.
var candidates = []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome", "chrome", "headless-shell"}

// Find returns the Chromium executable: $SHARESPOT_CHROMIUM, or the first
// of the usual names on PATH.
func Find() (string, error) {
	if p := os.Getenv(ChromiumEnv); p != "" {
		return exec.LookPath(p)
	}
	for _, name := range candidates {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no Chromium found (looked for " + ChromiumEnv + " and chromium, chromium-browser, google-chrome on PATH): apt-get install chromium")
}

// Require returns the Chromium executable, or skips t where there is
// none — and fails it in CI.
func Require(t testing.TB) string {
	t.Helper()
	p, err := Find()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("browsertest: %v", err)
		}
		t.Skipf("browsertest: %v", err)
	}
	return p
}

// Browser is a running headless Chromium.
type Browser struct {
	ctx context.Context
}

// Start starts a headless Chromium for t, closed when t ends; its tabs
// (Tab) share cookies, an Incognito tab has its own.
func Start(t testing.TB) *Browser {
	t.Helper()
	path := Require(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Flag("headless", "new"),
		chromedp.Flag("disable-gpu", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	// Start the browser now, so that a broken one fails here.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		cancelAlloc()
		if os.Getenv("CI") != "true" && errors.Is(err, exec.ErrNotFound) {
			t.Skipf("browsertest: %v", err)
		}
		t.Fatalf("browsertest: start %s: %v", path, err)
	}
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	return &Browser{ctx: ctx}
}

// Context is the browser's first tab.
func (b *Browser) Context() context.Context { return b.ctx }

// Tab opens a new tab (sharing the browser's cookies), closed when t ends.
func (b *Browser) Tab(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	t.Cleanup(cancel)
	return ctx
}

// Incognito opens a tab in a browser context of its own: its cookies are
// its own, as another person's browser would be.
func (b *Browser) Incognito(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	return ctx
}

// Screenshot sets the tab's viewport to width×height and, when
// SHARESPOT_SCREENSHOTS names a directory, writes the whole page as
// <dir>/<name>.png, width pixels wide. With mobile set the page is laid
// out as on a phone (mobile viewport, touch, portrait).
func Screenshot(t testing.TB, ctx context.Context, name string, width, height int64, mobile bool) {
	t.Helper()
	dir := os.Getenv(ScreenshotsEnv)
	if dir == "" {
		return
	}
	var vo []chromedp.EmulateViewportOption
	if mobile {
		vo = append(vo, chromedp.EmulateMobile, chromedp.EmulateTouch, chromedp.EmulatePortrait)
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(width, height, vo...), chromedp.Sleep(200*time.Millisecond)); err != nil {
		t.Fatalf("browsertest: viewport %dx%d: %v", width, height, err)
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("browsertest: screenshot %s: %v", name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("browsertest: wrote %s (%dx%d)", p, width, height)
}
