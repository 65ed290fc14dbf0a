// The Sharespot dashboard's script: shows every time in the viewer's time
// zone, polls /dashboard/live every two seconds, updates each open
// session's used and granted data, state and rate (the server works the
// rate out from the host's usage reports), and draws each live session's
// usage over time. When sessions appear or end, the page is loaded again
// (the server renders it). Nothing is fetched from elsewhere.
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    hourCycle: "h23", timeZoneName: "short"
  });
  var clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });

  // when formats epoch ms as "YYYY-MM-DD HH:MM zone" in the viewer's zone.
  function when(ms) {
    var p = {};
    fmt.formatToParts(new Date(ms)).forEach(function (x) { p[x.type] = x.value; });
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute + " " + p.timeZoneName;
  }
  function localTimes(root) {
    root.querySelectorAll("time[data-ms]").forEach(function (t) {
      var ms = Number(t.getAttribute("data-ms"));
      if (isFinite(ms)) { t.textContent = when(ms); t.title = t.getAttribute("datetime"); }
    });
  }
  localTimes(document);

  var table = document.getElementById("live");
  if (!table) { return; }
  var status = document.getElementById("livestate");

  function bytes(n) {
    var units = ["B", "kB", "MB", "GB", "TB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i === 0 ? Math.round(n) : n.toFixed(1).replace(/\.0$/, "")) + " " + units[i];
  }
  function el(name, attrs, text) {
    var e = document.createElementNS(SVGNS, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }

  // draw puts a session's usage into its figure's SVG: a line of bytes
  // used over time and, behind it, a bar per report interval of its rate.
  function draw(fig, s) {
    var svg = fig.querySelector("svg");
    if (!svg) { return; }
    var pts = s.samples || [];
    var W = 640, H = 180, L = 64, R = 16, T = 16, B = 28;
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    svg.appendChild(el("title", {}, "Data used over time: " + s.used_text + " of " + s.granted_text + ", rate " + s.rate_text));
    svg.appendChild(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, "class": "axis" }));
    if (pts.length === 0) {
      svg.appendChild(el("text", { x: L, y: H / 2, "class": "lbl" }, "no usage reported yet"));
      return;
    }
    var t0 = pts[0][0], t1 = Math.max(pts[pts.length - 1][0], t0 + 1);
    var top = Math.max(s.granted, pts[pts.length - 1][1], 1);
    var rates = [], peak = 0;
    for (var i = 1; i < pts.length; i++) {
      var dt = pts[i][0] - pts[i - 1][0];
      var r = dt > 0 ? Math.max(0, pts[i][1] - pts[i - 1][1]) * 1000 / dt : 0;
      rates.push(r);
      peak = Math.max(peak, r);
    }
    function x(t) { return L + (t - t0) * (W - L - R) / (t1 - t0); }
    function y(v) { return H - B - v * (H - T - B) / top; }
    for (var j = 0; j < rates.length; j++) {
      if (peak <= 0 || rates[j] <= 0) { continue; }
      var h = rates[j] * (H - T - B) / peak;
      var bar = el("rect", { x: x(pts[j][0]), y: H - B - h, width: Math.max(1, x(pts[j + 1][0]) - x(pts[j][0]) - 1), height: h, "class": "rate-bar" });
      bar.appendChild(el("title", {}, bytes(rates[j]) + "/s"));
      svg.appendChild(bar);
    }
    var line = pts.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1); }).join(" ");
    svg.appendChild(el("polyline", { points: line, "class": "used-line" }));
    svg.appendChild(el("text", { x: L - 6, y: y(top) + 4, "text-anchor": "end", "class": "lbl" }, bytes(top)));
    svg.appendChild(el("text", { x: L - 6, y: H - B, "text-anchor": "end", "class": "lbl" }, "0"));
    svg.appendChild(el("text", { x: L, y: H - 8, "class": "lbl" }, clock.format(new Date(t0))));
    svg.appendChild(el("text", { x: W - R, y: H - 8, "text-anchor": "end", "class": "lbl" }, clock.format(new Date(t1))));
    svg.appendChild(el("text", { x: W - R, y: T, "text-anchor": "end", "class": "val" },
      s.used_text + " used · " + s.rate_text + (peak > 0 ? " · peak " + bytes(peak) + "/s" : "")));
  }

  function shown() {
    var ids = [];
    table.querySelectorAll("tr[data-session]").forEach(function (tr) { ids.push(tr.getAttribute("data-session")); });
    return ids.sort().join(",");
  }
  function set(tr, f, text) {
    var e = tr.querySelector('[data-f="' + f + '"]');
    if (e && e.textContent !== text) { e.textContent = text; }
    return e;
  }
  function apply(live) {
    var ids = live.sessions.map(function (s) { return s.id; }).sort().join(",");
    if (ids !== shown()) { window.location.reload(); return; }
    live.sessions.forEach(function (s) {
      var tr = table.querySelector('tr[data-session="' + s.id + '"]');
      if (!tr) { return; }
      set(tr, "state", s.state);
      set(tr, "used", s.used_text);
      set(tr, "granted", s.granted_text);
      set(tr, "rate", s.rate_text);
      var m = tr.querySelector('[data-f="meter"]');
      if (m) { m.max = s.granted; m.value = s.used; }
      var fig = document.querySelector('figure[data-usage="' + s.id + '"]');
      if (fig) { draw(fig, s); }
    });
    var n = document.getElementById("live-count");
    if (n && live.states === undefined) { n.textContent = String(live.sessions.length); }
    if (n && live.states !== undefined) {
      var open = 0;
      Object.keys(live.states).forEach(function (k) { if (k !== "ENDED") { open += live.states[k]; } });
      n.textContent = String(open);
    }
    var asof = document.querySelector("#asof time");
    if (asof) {
      asof.setAttribute("data-ms", String(live.now_ms));
      asof.setAttribute("datetime", new Date(live.now_ms).toISOString());
      asof.textContent = when(live.now_ms);
    }
    if (status) { status.textContent = "live"; }
  }
  function poll() {
    fetch("/dashboard/live", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); throw new Error("signed out"); }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(apply)
      .catch(function () { if (status) { status.textContent = "live numbers paused: the server did not answer"; } })
      .then(function () { setTimeout(poll, 2000); });
  }
  poll();
}());
