// Live numbers for the Sharespot dashboard: polls /dashboard/live every two
// seconds, updates each open session's used and granted data and state,
// and works out its rate from the last two polls. When sessions appear or
// end, the page is loaded again (the server renders it).
(function () {
  "use strict";
  var table = document.getElementById("live");
  if (!table) { return; }
  var last = {}; // id -> {used, at}: the last poll's count, at this browser's time
  var status = document.getElementById("livestate");
  function rate(bps) {
    var units = ["B/s", "kB/s", "MB/s", "GB/s"], i = 0;
    while (bps >= 1000 && i < units.length - 1) { bps /= 1000; i++; }
    return (i === 0 ? Math.round(bps) : bps.toFixed(1)) + " " + units[i];
  }
  function shown() {
    var ids = [];
    table.querySelectorAll("tr[data-session]").forEach(function (tr) { ids.push(tr.getAttribute("data-session")); });
    return ids.sort().join(",");
  }
  function set(tr, f, text) {
    var el = tr.querySelector('[data-f="' + f + '"]');
    if (el && el.textContent !== text) { el.textContent = text; }
    return el;
  }
  function apply(live) {
    var at = Date.now();
    var ids = live.sessions.map(function (s) { return s.id; }).sort().join(",");
    if (ids !== shown()) { window.location.reload(); return; }
    live.sessions.forEach(function (s) {
      var tr = table.querySelector('tr[data-session="' + s.id + '"]');
      if (!tr) { return; }
      set(tr, "state", s.state);
      set(tr, "used", s.used_text);
      set(tr, "granted", s.granted_text);
      var m = tr.querySelector('[data-f="meter"]');
      if (m) { m.max = s.granted; m.value = s.used; }
      var p = last[s.id];
      if (p && at > p.at) {
        set(tr, "rate", rate(Math.max(0, s.used - p.used) * 1000 / (at - p.at)));
      }
      last[s.id] = { used: s.used, at: at };
    });
    var n = document.getElementById("live-count");
    if (n && live.states === undefined) { n.textContent = String(live.sessions.length); }
    if (n && live.states !== undefined) {
      var open = 0;
      Object.keys(live.states).forEach(function (k) { if (k !== "ENDED") { open += live.states[k]; } });
      n.textContent = String(open);
    }
    var asof = document.getElementById("asof");
    if (asof) { asof.textContent = new Date(live.now_ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC"); }
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
