package portal_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// audit checks the page as it is shown, in the browser: nothing wider
// than the screen; every visible form field with a label; every visible
// button with a name; every visible text at a WCAG AA contrast (4.5:1,
// 3:1 for large text) against the background it is drawn on. It returns
// what fails, one line each.
const audit = `(() => {
  const bad = [];
  const visible = (e) => e.offsetParent !== null || e.getClientRects().length > 0;
  if (document.documentElement.scrollWidth > window.innerWidth)
    bad.push("the page is " + document.documentElement.scrollWidth + " px wide on a " + window.innerWidth + " px screen");
  for (const e of document.querySelectorAll("body *")) {
    if (!visible(e)) continue;
    const r = e.getBoundingClientRect();
    if (r.right > window.innerWidth + 0.5 && getComputedStyle(e).overflowX !== "hidden")
      bad.push("#" + (e.id || e.tagName) + " reaches " + Math.round(r.right) + " px");
  }
  for (const f of document.querySelectorAll("input, select, textarea, meter, progress")) {
    if (!visible(f) || f.type === "hidden") continue;
    const named = (f.labels && f.labels.length) || f.getAttribute("aria-label") || f.getAttribute("aria-labelledby");
    if (!named) bad.push("#" + (f.id || f.tagName) + " has no label");
  }
  for (const b of document.querySelectorAll("button, a[href]")) {
    if (!visible(b)) continue;
    if (!(b.textContent.trim() || b.getAttribute("aria-label"))) bad.push("#" + (b.id || b.tagName) + " has no name");
  }
  const rgb = (s) => { const m = s.match(/[\d.]+/g).map(Number); return {r: m[0], g: m[1], b: m[2], a: m.length > 3 ? m[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }; return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = (e) => {
    for (; e; e = e.parentElement) { const c = rgb(getComputedStyle(e).backgroundColor); if (c.a > 0) return c; }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  for (const e of document.querySelectorAll("body *")) {
    if (!visible(e)) continue;
    const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own) continue;
    const st = getComputedStyle(e);
    const fg = rgb(st.color), bg = background(e);
    const l1 = lum(fg), l2 = lum(bg);
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight, 10) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) bad.push("#" + (e.id || e.tagName) + " " + JSON.stringify(e.textContent.trim().slice(0, 30)) + ": contrast " + ratio.toFixed(2) + ", want " + need);
  }
  return bad.join("\n");
})()`

// TestBrowserAccessible: the guest page at the narrowest and widest
// phone widths it is made for (320 and 430 px): on the hotspot, fee and
// online screens nothing overflows the screen, every field has a label,
// every button a name, every text AA contrast; and a guest using only the
// keyboard reaches "Ask the host", asks, and pays.
func TestBrowserAccessible(t *testing.T) {
	r := newLoopRig(t, loopOptions{})
	r.fundPage(1000)
	check := func(screen string) {
		t.Helper()
		for _, w := range []int64{320, 430} {
			r.run(fmt.Sprintf("%d px", w), chromedp.EmulateViewport(w, 740, chromedp.EmulateScale(1)))
			if bad := eval[string](r, "audit "+screen, audit); bad != "" {
				t.Errorf("%s at %d px:\n%s", screen, w, bad)
			}
		}
		r.run("360 px", chromedp.EmulateViewport(360, 740, chromedp.EmulateScale(1)))
	}
	check("the hotspot")

	// The keyboard alone: Tab to "Ask the host" (its field first), Enter.
	found := false
	for range 30 {
		r.run("tab", chromedp.KeyEvent(kb.Tab))
		if eval[string](r, "focus", `document.activeElement ? document.activeElement.id : ""`) == "request" {
			found = true
			break
		}
	}
	if !found {
		t.Fatal(`"Ask the host" is not reachable with Tab`)
	}
	if !eval[bool](r, "focus ring", `getComputedStyle(document.activeElement).outlineStyle !== "none" || getComputedStyle(document.activeElement).boxShadow !== "none"`) {
		t.Error("the focused button shows no focus ring")
	}
	r.run("ask with Enter", chromedp.KeyEvent(kb.Enter), chromedp.WaitVisible(chromedp.ID("pay-h")))
	check("the fee")
	// Paying with the keyboard: the fee screen's heading takes the focus,
	// the pay button is the next stop.
	found = false
	for range 10 {
		r.run("tab", chromedp.KeyEvent(kb.Tab))
		if eval[string](r, "focus", `document.activeElement ? document.activeElement.id : ""`) == "pay-wallet" {
			found = true
			break
		}
	}
	if !found {
		t.Fatal(`"Pay from my wallet" is not reachable with Tab`)
	}
	r.run("pay with Enter", chromedp.KeyEvent(kb.Enter), chromedp.WaitVisible(chromedp.ID("online-h")))
	check("online")
	if strings.TrimSpace(r.text("end")) == "" {
		t.Fatal("no End on the online screen")
	}
}
