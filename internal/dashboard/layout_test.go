package dashboard_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/client"
	"github.com/sharespot/sharespot/internal/size"
)

// phoneWidth is the narrowest phone the dashboards are checked at (CSS px).
const phoneWidth = 390

// declined has the guest ask hs's host for data and end the request at
// the fee, before any grant: a declined request. It returns its ID.
func (r *rig) declined(t *testing.T, hostC *client.Client, hs *sharespotv1.Hotspot) string {
	t.Helper()
	ctx := context.Background()
	ses, err := r.g.BeginHotspot(ctx, hs.Id, 10*mb)
	if err != nil {
		t.Fatal(err)
	}
	defer ses.Close()
	if _, err := hostC.Sessions.Quote(ctx, connect.NewRequest(&sharespotv1.QuoteRequest{SessionId: ses.ID, Bytes: 10 * mb, AmountMinor: 100, Currency: "EUR"})); err != nil {
		t.Fatal(err)
	}
	s, err := ses.End(ctx, "declined the fee")
	if err != nil {
		t.Fatal(err)
	}
	if s.State != sharespotv1.SessionState_SESSION_STATE_ENDED || s.GrantedBytes != 0 {
		t.Fatalf("the declined request is %s with %d bytes granted, want ended with none", s.State, s.GrantedBytes)
	}
	return ses.ID
}

// clipped lists, on the page as laid out now, what a reader cannot see
// whole: the document wider than the window, a table's box scrolled or
// wider than its container, a cell out of the window or without its
// column's label where the header row is hidden (a phone's stacked rows).
const clipped = `(() => {
  const out = [];
  const W = window.innerWidth;
  const se = document.scrollingElement;
  if (se.scrollWidth > W) { out.push("document " + se.scrollWidth + " px wide in a " + W + " px window"); }
  document.querySelectorAll(".scroll").forEach((s, i) => {
    if (s.scrollWidth > s.clientWidth + 1) { out.push("table box " + i + ": " + s.scrollWidth + " px of content in " + s.clientWidth + " px"); }
  });
  document.querySelectorAll("tbody tr").forEach(tr => {
    const key = tr.getAttributeNames().filter(a => a.startsWith("data-")).map(a => a + "=" + tr.getAttribute(a)).join(" ") || tr.textContent.trim().slice(0, 30);
    tr.querySelectorAll(":scope > td, :scope > th").forEach(c => {
      const r = c.getBoundingClientRect();
      if (r.width === 0 || r.height === 0) { out.push(key + ": a cell is not shown"); return; }
      if (r.left < -0.5 || r.right > W + 0.5) { out.push(key + ": cell " + (c.dataset.label || c.textContent.trim()) + " at " + r.left + ".." + r.right); }
      const head = c.closest("table").querySelector("thead");
      const headHidden = head && head.getBoundingClientRect().height <= 1;
      if (headHidden && !c.hasAttribute("colspan")) {
        const label = getComputedStyle(c, "::before").content;
        if (!c.dataset.label || label !== JSON.stringify(c.dataset.label)) { out.push(key + ": cell " + c.textContent.trim() + " has no label (" + label + ")"); }
      }
      c.querySelectorAll("[data-f]").forEach(v => {
        const q = v.getBoundingClientRect();
        if (v.dataset.f !== "meter" && (q.right > W + 0.5 || q.left < -0.5)) { out.push(key + ": " + v.dataset.f + " out of the window"); }
      });
    });
  });
  return out;
})()`

// asPhone lays the tab out as a phone 390 px wide and returns what is
// clipped there (nothing, on a page that fits).
func asPhone(t *testing.T, ctx context.Context) []string {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(phoneWidth, 844, chromedp.EmulateMobile, chromedp.EmulateTouch, chromedp.EmulatePortrait)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, fmt.Sprintf(`window.innerWidth === %d`, phoneWidth))
	out, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](clipped))
	if err != nil {
		t.Fatal(err)
	}
	// The header row is hidden: the rows are labelled blocks.
	stacked, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`[...document.querySelectorAll("table.stack thead")].every(h => h.getBoundingClientRect().height <= 1)`))
	if err != nil {
		t.Fatal(err)
	}
	if !stacked {
		out = append(out, "a table keeps its header row at 390 px: not stacked")
	}
	return out
}

func asDesktop(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 900)); err != nil {
		t.Fatal(err)
	}
}

// inZone has the tab's browser take zone as its time zone (as a viewer
// there would have) and loads the page again.
func inZone(t *testing.T, ctx context.Context, zone string) {
	t.Helper()
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetTimezoneOverride, emulation.SetTimezoneOverrideParams{TimezoneID: zone})
		return err
	}), chromedp.Reload())
	if err != nil {
		t.Fatalf("time zone %s: %v", zone, err)
	}
	waitFor(t, ctx, `document.readyState === "complete" && document.querySelector("main[data-role]") !== null`)
}

// shownTime is what the page shows in the row's [data-f=ended] cell and
// the instant its data-ms says.
func shownTime(t *testing.T, ctx context.Context, row string) (string, int64) {
	t.Helper()
	type shown struct {
		Text string `json:"text"`
		MS   int64  `json:"ms"`
	}
	s, err := chromedp.Run(ctx, chromedp.Evaluate[shown](fmt.Sprintf(`(() => { const e = document.querySelector('tr[%s] [data-f=ended] time'); return {text: e.textContent, ms: Number(e.dataset.ms)}; })()`, row)))
	if err != nil {
		t.Fatalf("read the time of %s: %v", row, err)
	}
	return s.Text, s.MS
}

// wantTime is how the page shows ms in a zone of offset east of UTC,
// named name.
func wantTime(ms int64, offset time.Duration, name string) string {
	return time.UnixMilli(ms).In(time.FixedZone(name, int(offset/time.Second))).Format("2006-01-02 15:04") + " " + name
}

// usagePoints is how many points the live session's usage chart draws.
func usagePoints(t *testing.T, ctx context.Context, id string) int {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`(() => { const l = document.querySelector('figure[data-usage=%q] polyline'); return l ? l.getAttribute("points") : ""; })()`, id)))
	if err != nil {
		t.Fatal(err)
	}
	return len(strings.Fields(s))
}

// rateText is the rate the page shows for used bytes more over d.
func rateText(more int64, d time.Duration) string {
	return size.Format(more*1000/d.Milliseconds()) + "/s"
}
