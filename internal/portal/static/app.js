// The Sharespot guest page: the same flow as `sharespot connect`, in the
// browser, on the server's Connect API (JSON over HTTP/1.1 or HTTP/2).
// The device key (Ed25519) and the session's HPKE key (X25519) are
// non-extractable WebCrypto keys kept in IndexedDB; the access code is
// opened here and sent only to the host's admission endpoint.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const te = new TextEncoder(), td = new TextDecoder();
  const b64 = (u8) => { let s = ""; for (const b of u8) s += String.fromCharCode(b); return btoa(s); };
  const unb64 = (s) => Uint8Array.from(atob((s || "").replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
  const num = (v) => Number(v || 0);

  // ---- Connect over JSON
  let token = "";
  class RPCError extends Error { constructor(code, msg) { super(msg); this.code = code; } }
  async function call(service, method, msg) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const res = await fetch("/sharespot.v1." + service + "/" + method, { method: "POST", headers, body: JSON.stringify(msg || {}) });
    const text = await res.text();
    let body = {};
    try { body = text ? JSON.parse(text) : {}; } catch (e) { throw new RPCError("unknown", res.status + " " + text.slice(0, 200)); }
    if (!res.ok) throw new RPCError(body.code || "unknown", body.message || res.statusText);
    return body;
  }
  // stream is a Connect server-streaming call: enveloped JSON (flag byte,
  // 4-byte big-endian length) both ways; flag 2 ends the stream.
  async function stream(service, method, msg, onMessage, signal) {
    const payload = te.encode(JSON.stringify(msg || {}));
    const req = new Uint8Array(5 + payload.length);
    new DataView(req.buffer).setUint32(1, payload.length);
    req.set(payload, 5);
    const res = await fetch("/sharespot.v1." + service + "/" + method, {
      method: "POST", signal, body: req,
      headers: { "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1", Authorization: "Bearer " + token },
    });
    if (!res.ok) throw new RPCError("unknown", "stream: " + res.status);
    const reader = res.body.getReader();
    let buf = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const nb = new Uint8Array(buf.length + value.length);
      nb.set(buf); nb.set(value, buf.length); buf = nb;
      while (buf.length >= 5) {
        const flags = buf[0], len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
        if (buf.length < 5 + len) break;
        const obj = JSON.parse(td.decode(buf.subarray(5, 5 + len) || "{}") || "{}");
        buf = buf.slice(5 + len);
        if (flags & 2) {
          if (obj.error) throw new RPCError(obj.error.code, obj.error.message);
          return;
        }
        await onMessage(obj);
      }
    }
  }

  // ---- IndexedDB: non-extractable keys and the session in progress
  function db() {
    return new Promise((ok, fail) => {
      const r = indexedDB.open("sharespot", 1);
      r.onupgradeneeded = () => r.result.createObjectStore("kv");
      r.onsuccess = () => ok(r.result);
      r.onerror = () => fail(r.error);
    });
  }
  async function kv(mode, fn) {
    const d = await db();
    return new Promise((ok, fail) => {
      const tx = d.transaction("kv", mode);
      const r = fn(tx.objectStore("kv"));
      tx.oncomplete = () => ok(r && r.result);
      tx.onerror = () => fail(tx.error);
    });
  }
  const get = (k) => kv("readonly", (s) => s.get(k));
  const put = (k, v) => kv("readwrite", (s) => s.put(v, k));
  const del = (k) => kv("readwrite", (s) => s.delete(k));

  // ---- UI helpers
  const show = (id) => { for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== id; const h = $(id).querySelector("h2"); if (h) h.focus(); };
  const say = (msg) => { $("status").textContent = msg; };
  const fail = (e) => { $("error").textContent = e && e.message ? e.message : String(e); $("error").hidden = false; };
  const clearError = () => { $("error").hidden = true; $("error").textContent = ""; };
  function money(minor, cur) {
    const digits = { JPY: 0, KRW: 0, KWD: 3, BHD: 3 }[cur] ?? 2;
    try { return new Intl.NumberFormat(undefined, { style: "currency", currency: cur, minimumFractionDigits: digits }).format(num(minor) / 10 ** digits); }
    catch (e) { return num(minor) + " " + cur; }
  }
  function size(b) {
    b = num(b);
    for (const [u, n] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) if (b >= n) return (b / n).toFixed(b % n ? 1 : 0) + " " + u;
    return b + " B";
  }
  const price = (t, bytes, topUp) => { const p = num(topUp ? t.topupPriceMinor : t.priceMinor), u = num(t.unitBytes); return Math.ceil(bytes * p / u); };

  // ---- state
  const st = { hotspot: null, session: null, quote: null, hpke: null, hostId: "", deviceId: "", admit: params.get("admit") || "", seq: 0, topUp: false, abort: null,
    cards: false, cardFailed: {} };

  async function signIn() {
    let kp = await get("device");
    if (!kp) {
      kp = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
      await put("device", kp);
    }
    const pub = new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey));
    const ch = await call("AuthService", "Challenge", { publicKey: b64(pub) });
    const nonce = unb64(ch.nonce);
    const msg = new Uint8Array(te.encode("sharespot/signin/v1\0").length + nonce.length);
    msg.set(te.encode("sharespot/signin/v1\0")); msg.set(nonce, msg.length - nonce.length);
    const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, kp.privateKey, msg));
    const res = await call("AuthService", "SignIn", { publicKey: b64(pub), nonce: ch.nonce, signature: b64(sig), deviceName: "browser" });
    token = res.token; st.deviceId = res.deviceId; st.accountId = res.accountId;
    $("device").textContent = res.deviceId.slice(0, 12) + "…";
  }

  async function balance() {
    const b = await call("PaymentService", "Balance", {});
    const cur = st.hotspot ? st.hotspot.tariff.currency : "";
    const m = (b.balances || []).find((x) => x.currency === cur);
    $("wallet").textContent = $("wallet2").textContent = money(m ? m.amountMinor : 0, cur || "EUR");
    // Cards, when the server takes them without a PaymentMethod made on
    // this device (this page loads nothing from Stripe, so it cannot make
    // one): a test-mode server, which pays with Stripe's test card.
    st.cards = (b.payMethods || []).includes("PAY_METHOD_CARD") && !!b.cardWithoutPaymentMethod;
    cardChoice();
  }
  // The "Pay by card" choice shows when the server takes cards and this
  // quote's card payment has not failed.
  function cardChoice() {
    $("pay-card").hidden = !(st.cards && !(st.quote && st.cardFailed[st.quote.id]));
  }

  // C1.2–C1.4: this hotspot (named by the portal's redirect) and its tariff.
  async function discover() {
    const bssid = params.get("bssid") || "";
    const ssid = params.get("ssid") || "";
    if (!bssid) throw new Error("This page was opened without a hotspot. Join the host's Wi-Fi and open any http:// address to be sent here.");
    const res = await call("DiscoveryService", "Discover", { candidates: [{ bssid, ssid: b64(te.encode(ssid)) }] });
    const o = (res.available || [])[0];
    if (!o) throw new Error("This hotspot is not selling data right now (not registered, withdrawn, or sold out).");
    st.hotspot = o;
    const t = o.tariff;
    $("ssid").textContent = td.decode(unb64(o.accessPoint.ssid));
    $("tariff").textContent = money(t.priceMinor, t.currency) + " per " + size(t.unitBytes) + (num(t.topupPriceMinor) !== num(t.priceMinor) ? ", top-ups " + money(t.topupPriceMinor, t.currency) + " per " + size(t.unitBytes) : "");
    $("available").textContent = size(o.availableBytes);
    $("min").textContent = size(t.minPurchaseBytes);
    $("record").textContent = record(o.hostRecord);
    $("amount").min = Math.ceil(num(t.minPurchaseBytes) / 1e6);
    $("amount").value = Math.max(num($("amount").value), num($("amount").min));
    preview();
  }
  // record says how the host's counts compared with its guests'
  // acknowledgments in its settled verified sessions.
  function record(r) {
    const v = num(r && r.verifiedSessions), over = num(r && r.overCountedSessions);
    if (!v) return "no verified sessions yet";
    return v + " verified sessions" + (over ? ", counted more than its guests acknowledged in " + over : ", never counted more than its guests acknowledged");
  }
  function preview() {
    const t = st.hotspot && st.hotspot.tariff;
    if (!t) return;
    const mb = num($("amount").value);
    $("estimate").textContent = mb > 0 ? money(price(t, mb * 1e6, false), t.currency) : "—";
  }

  // C1.5: ask for an amount, with one HPKE key for the preset suite.
  async function request(ev) {
    ev.preventDefault(); clearError();
    const bytes = Math.round(num($("amount").value) * 1e6);
    const kp = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
    const pub = new Uint8Array(await crypto.subtle.exportKey("raw", kp.publicKey));
    const res = await call("SessionService", "RequestAccess", {
      hotspotId: st.hotspot.hotspotId, bytes: String(bytes),
      guestKeys: [{ suite: SharespotHPKE.suite, publicKey: b64(pub) }], shownTariff: st.hotspot.tariff,
      // A page cannot count what the phone receives: the host's count is
      // the bill (at most what is bought), as the page says.
      usageMode: "USAGE_MODE_UNVERIFIED",
    });
    st.session = res.session; st.hostId = res.session.hostDeviceId; st.hpke = { key: kp.privateKey, pub };
    await put("session", { id: st.session.id, hostId: st.hostId, hpke: st.hpke, admit: st.admit, bssid: params.get("bssid"), ssid: params.get("ssid") });
    say("Request sent; waiting for the host's fee…");
    show("wait");
    listen();
  }

  // The inbox: fee (C3.1), grant (C1.7, C1.15), prompt (C1.9), decline, end.
  async function listen() {
    if (st.abort) return;
    const ctl = new AbortController();
    st.abort = ctl;
    for (let attempt = 0; !ctl.signal.aborted; attempt++) {
      try {
        await stream("InboxService", "Subscribe", { afterSeq: String(st.seq) }, handle, ctl.signal);
        attempt = 0;
      } catch (e) {
        if (ctl.signal.aborted) return;
        if (e.code === "unauthenticated") await signIn().catch(() => {});
        else if (!(e instanceof TypeError)) fail(e); // not a dropped connection: say it, then try again
        await new Promise((r) => setTimeout(r, Math.min(500 * 2 ** attempt, 5000)));
      }
    }
  }
  async function handle(res) {
    for (const env of res.envelopes || []) {
      const seq = num(env.seq);
      if (seq <= st.seq) continue;
      if (st.session && env.sessionId === st.session.id) {
        if (env.feeInfo) onFee(env.feeInfo.quote);
        else if (env.accessGranted) await onGranted(env.accessGranted);
        else if (env.lowQuotaPrompt) onPrompt(env.lowQuotaPrompt);
        else if (env.declined) { fail(new Error("The host declined: " + (env.declined.reason || "no reason given"))); if (!st.admitted) show("buy"); }
        else if (env.sessionEnded) onEnded(env.sessionEnded.session);
      }
      st.seq = seq;
      await call("InboxService", "Ack", { seq: String(seq) });
    }
  }

  // C3.1: the fee, checked against the tariff the page showed.
  function onFee(q) {
    const t = st.hotspot.tariff;
    st.topUp = q.kind === "QUOTE_KIND_TOPUP";
    const want = price(t, num(q.bytes), st.topUp);
    if (num(q.amountMinor) > want || q.currency !== t.currency) {
      fail(new Error("The host asks " + money(q.amountMinor, q.currency) + " for " + size(q.bytes) + ", more than the tariff gives (" + money(want, t.currency) + "); ending."));
      end();
      return;
    }
    const paying = st.paying === q.id; // the same fee again (a resumed inbox): the card payment goes on
    st.quote = q;
    $("fee").textContent = money(q.amountMinor, q.currency);
    $("fee-bytes").textContent = size(q.bytes);
    if (!paying) {
      say("");
      $("card-wait").hidden = true;
      $("pay-choices").hidden = false;
    }
    cardChoice();
    show("pay");
    balance().catch(fail);
    // A card payment of this quote started before a reload: go on with it.
    get("card").then((id) => { if (id === q.id) return payByCard(); }).catch(fail);
  }

  // C3.2–C3.3: pay from the wallet and confirm with the receipt.
  async function pay() {
    clearError();
    payButtons(true);
    try {
      const pr = await call("PaymentService", "Pay", { quoteId: st.quote.id });
      await confirm(pr.receipt);
    } finally { payButtons(false); }
  }
  function payButtons(disabled) { $("pay-wallet").disabled = $("pay-card-btn").disabled = disabled; }
  async function confirm(receipt) {
    await call("SessionService", "Confirm", { sessionId: st.session.id, receipt });
    say("Paid; waiting for the host's access code…");
    show("wait");
  }

  // C3.2–C3.3 / C1.13 by card (Stripe): the server holds the fee on the
  // card and answers PAID with the receipt once Stripe reports it
  // authorised; until then Pay is asked again (backing off), showing the
  // bank's 3-D Secure page as a link when Stripe asks for it. The page
  // never sees a card number.
  async function payByCard() {
    if (st.paying) return;
    const q = st.quote, sessionId = st.session.id;
    st.paying = q.id;
    clearError();
    payButtons(true);
    say("");
    $("pay-choices").hidden = true; // one payment at a time: the wallet comes back only if the card fails
    $("card-wait").hidden = false;
    $("card-action").hidden = true;
    $("card-state").textContent = "Paying by card…";
    try {
      await put("card", q.id); // a reload goes on with this payment, never starts a wallet one beside it
      for (let attempt = 0; ; attempt++) {
        let pr;
        try { pr = await call("PaymentService", "Pay", { quoteId: q.id, method: "PAY_METHOD_CARD" }); }
        catch (e) {
          // Stripe or the server unreachable for a moment: ask again.
          if (!(e instanceof TypeError) && e.code !== "unavailable" && e.code !== "resource_exhausted") throw e;
          pr = { status: "PAY_STATUS_PENDING" };
        }
        if (!st.quote || st.quote.id !== q.id || !st.session || st.session.id !== sessionId) return; // another fee or session took over
        if (pr.status === "PAY_STATUS_PAID" && pr.receipt) {
          await del("card");
          $("card-wait").hidden = true;
          await confirm(pr.receipt);
          return;
        }
        if (pr.status === "PAY_STATUS_FAILED") {
          await del("card");
          st.cardFailed[q.id] = true;
          $("card-wait").hidden = true;
          cardChoice();
          $("pay-choices").hidden = false;
          let why = (pr.failure || "no reason given").replace(/^the card payment failed:\s*/i, "");
          if (!/[.!?]$/.test(why)) why += ".";
          fail(new Error("The card payment did not go through: " + why + " Pay from your wallet instead."));
          payButtons(false);
          $("pay-wallet").focus();
          return;
        }
        if (pr.status === "PAY_STATUS_REQUIRES_ACTION") {
          const url = pr.actionUrl || "";
          if (!/^https:\/\//.test(url)) throw new Error("The bank's confirmation page has an address this page will not open: " + url);
          if ($("card-action-link").href !== url) $("card-action-link").href = url;
          if ($("card-action").hidden) {
            $("card-action").hidden = false;
            $("card-state").textContent = "Your bank asks you to confirm this payment.";
            $("card-action-link").focus();
          }
        } else {
          $("card-state").textContent = "Waiting for the card payment to be authorised…";
        }
        await new Promise((r) => setTimeout(r, Math.min(500 * 1.5 ** attempt, 5000)));
      }
    } catch (e) {
      // Not a failure of the card: say what; the payment goes on after a
      // reload, and the wallet can be chosen again.
      $("pay-choices").hidden = false;
      throw e;
    } finally {
      if (st.paying === q.id) st.paying = "";
      payButtons(false);
    }
  }

  // C1.7–C1.8 / C1.15: open the sealed code here and present it to the
  // host's gateway, which admits this device's address.
  async function onGranted(g) {
    const addr = (g.gateway && g.gateway.address) || st.admit;
    st.granted = num(g.totalGrantedBytes);
    if (!st.admitted && g.sealedCode) {
      const sc = g.sealedCode;
      const info = SharespotHPKE.binding(st.session.id, st.hostId, st.deviceId);
      const code = await SharespotHPKE.open(st.hpke.key, st.hpke.pub, unb64(sc.enc), unb64(sc.ciphertext), info);
      if (g.gateway && g.gateway.kind === "proxy") {
        // The userspace gateway: the phone's browser uses it as its proxy
        // (a PAC file from this server) with the session and code as the
        // proxy's credentials, which only this page can show.
        $("pac-url").textContent = location.origin + "/guest/proxy.pac?gw=" + encodeURIComponent(addr);
        $("proxy-user").textContent = st.session.id;
        $("proxy-pass").textContent = SharespotHPKE.formatCode(code);
        $("proxy-setup").hidden = false;
        st.admitted = true;
        return onGranted(g);
      }
      // This page is HTTPS and the host's endpoint cleartext on the LAN, so
      // the page cannot post to it (mixed content): it goes to the host's
      // admission page with the code in the URL fragment (never sent over
      // the network), which posts it and comes back here with #admitted.
      const frag = new URLSearchParams({ session: st.session.id, code: SharespotHPKE.formatCode(code), back: location.href.split("#")[0] });
      say("Presenting your code to the hotspot…");
      location.assign("http://" + addr + "/admit#" + frag.toString());
      return new Promise(() => {}); // the page is leaving; nothing is acknowledged
    }
    st.topUp = false;
    $("prompt").hidden = true;
    say("Online.");
    show("online");
    poll();
  }

  // Used and remaining, live: the session as the server has it.
  async function poll() {
    if (st.polling) return;
    st.polling = true;
    while (st.session && !st.ended) {
      try {
        const res = await call("SessionService", "Get", { sessionId: st.session.id });
        const s = res.session;
        const used = num(s.usedBytes), granted = num(s.grantedBytes);
        $("used").textContent = size(used);
        $("remaining").textContent = size(Math.max(granted - used, 0));
        $("meter").max = granted || 1; $("meter").value = used;
        if (s.state === "SESSION_STATE_ENDED") { onEnded(s); break; }
      } catch (e) { /* the next round tries again */ }
      await new Promise((r) => setTimeout(r, 1000));
    }
    st.polling = false;
  }

  // C1.9–C1.10: the low-quota prompt; C1.11: ask for more.
  function onPrompt(p) {
    $("prompt-left").textContent = size(p.remainingBytes);
    $("prompt").hidden = false;
    $("topup-amount").focus();
  }
  async function topUp(ev) {
    ev.preventDefault(); clearError();
    const bytes = Math.round(num($("topup-amount").value) * 1e6);
    await call("SessionService", "RequestTopUp", { sessionId: st.session.id, bytes: String(bytes) });
    say("Top-up requested; waiting for the host's fee…");
    $("prompt").hidden = true;
  }

  async function end() {
    clearError();
    if (!st.session) return;
    $("end").disabled = true;
    say("Ending; waiting for the host's final count…");
    try { await call("SessionService", "End", { sessionId: st.session.id, reason: "guest ended" }); }
    catch (e) { if (e.code !== "failed_precondition") throw e; }
  }
  function onEnded(s) {
    if (st.ended) return;
    st.ended = true;
    if (st.abort) { st.abort.abort(); st.abort = null; }
    const cur = s.currency || (st.hotspot && st.hotspot.tariff.currency) || "EUR";
    $("s-used").textContent = size(s.usedBytes);
    $("s-paid").textContent = money(s.paidMinor, cur);
    $("s-charged").textContent = money(num(s.settledHostMinor) + num(s.settledFeeMinor), cur);
    $("s-refunded").textContent = money(s.refundedMinor, cur);
    del("session").catch(() => {});
    say("Session ended.");
    show("ended");
  }

  // Resume a session this browser started (after a reload or the portal's redirect).
  async function resume() {
    const saved = await get("session");
    if (!saved) return false;
    let s;
    try { s = (await call("SessionService", "Get", { sessionId: saved.id })).session; } catch (e) { await del("session"); return false; }
    if (s.state === "SESSION_STATE_ENDED") { await del("session"); return false; }
    st.session = s; st.hostId = saved.hostId; st.hpke = saved.hpke; st.admit = saved.admit || st.admit;
    if (location.hash === "#admitted") {
      saved.admitted = true;
      await put("session", saved);
      history.replaceState(null, "", location.pathname + location.search);
    }
    st.admitted = !!saved.admitted;
    listen();
    if (st.admitted && (s.state === "SESSION_STATE_ACTIVE" || s.state === "SESSION_STATE_ENDING")) {
      // Admitted: the gateway keeps this address bound.
      say("Online (resumed).");
      show("online");
      poll();
    } else {
      say("Resuming your session…");
      show("wait");
    }
    // A fee shown before the reload, or a payment whose confirmation was
    // cut off: pick up where the session is.
    for (const q of s.quotes || []) {
      if (q.state === "QUOTE_STATE_OPEN") onFee(q);
      else if (q.state === "QUOTE_STATE_PAID" && q.receipt) {
        del("card").catch(() => {});
        await call("SessionService", "Confirm", { sessionId: s.id, receipt: q.receipt }).catch(fail);
      }
    }
    return true;
  }

  const guard = (fn) => (ev) => Promise.resolve(fn(ev)).catch(fail);
  async function main() {
    $("noscript-hint").hidden = true;
    if (!window.crypto || !crypto.subtle || !window.indexedDB || !window.ReadableStream) {
      throw new Error("This browser lacks WebCrypto, IndexedDB or streams; use a current Chrome, Firefox or Safari.");
    }
    $("buy-form").addEventListener("submit", guard(request));
    $("amount").addEventListener("input", preview);
    $("pay-wallet").addEventListener("click", guard(pay));
    $("pay-card-btn").addEventListener("click", guard(payByCard));
    $("topup-form").addEventListener("submit", guard(topUp));
    $("end").addEventListener("click", guard(end));
    $("again").addEventListener("click", () => location.reload());
    say("Signing in…");
    await signIn();
    await discover();
    await balance();
    if (!(await resume())) { say(""); show("buy"); }
  }
  window.SharespotPage = { call, stream, state: st };
  main().catch(fail);
})();
