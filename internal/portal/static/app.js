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
  // size writes bytes in decimal units, in unit (one of UNITS) when
  // given, so that the figures on one screen read alike; otherwise in the
  // largest unit they reach.
  const UNITS = [["GB", 1e9], ["MB", 1e6], ["kB", 1e3], ["B", 1]];
  function size(b, unit) {
    b = num(b);
    const [u, n] = unit || UNITS.find(([, n]) => b >= n) || UNITS[3];
    const v = b / n;
    return (n === 1 ? String(Math.round(v)) : String(Number(v.toFixed(v < 10 ? 2 : 1)))) + " " + u;
  }
  const unitFor = (b) => UNITS.find(([, n]) => num(b) >= n && n >= 1e3) || UNITS[2];
  const price = (t, bytes, topUp) => { const p = num(topUp ? t.topupPriceMinor : t.priceMinor), u = num(t.unitBytes); return Math.ceil(bytes * p / u); };

  // ---- state
  const st = { hotspot: null, session: null, quote: null, hpke: null, hostId: "", deviceId: "", admit: params.get("admit") || "", seq: 0, topUp: false, abort: null,
    cards: false, cardFailed: {}, grantedQuote: {} };

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
    $("device").textContent = res.deviceId;
  }

  async function balance() {
    const b = await call("PaymentService", "Balance", {});
    const cur = st.hotspot ? st.hotspot.tariff.currency : "";
    const m = (b.balances || []).find((x) => x.currency === cur);
    st.wallet = num(m ? m.amountMinor : 0);
    $("wallet").textContent = $("wallet2").textContent = money(st.wallet, cur || "EUR");
    // Cards, when the server takes them without a PaymentMethod made on
    // this device (this page loads nothing from Stripe, so it cannot make
    // one): a test-mode server, which pays with Stripe's test card. A
    // live server needs Stripe's own payment form (docs/payments), which
    // this page does not load: it says so.
    const takesCards = (b.payMethods || []).includes("PAY_METHOD_CARD");
    st.cards = takesCards && !!b.cardWithoutPaymentMethod;
    $("fund").hidden = !st.cards;
    $("fund-cur").textContent = cur || "EUR";
    $("no-cards").hidden = st.cards;
    $("no-cards").textContent = takesCards
      ? "This server takes cards only through Stripe's payment form, which this page does not load: use the Sharespot app, or give the operator your device ID (below) to fund your wallet."
      : "This server takes no card payments. To add money to your wallet, give the operator your device ID (below, with a copy button).";
    cardChoice();
    shortOfMoney();
  }
  // shortOfMoney says, on the fee screen, when the wallet cannot pay it.
  function shortOfMoney() {
    const q = st.quote;
    const short = !!q && st.wallet < num(q.amountMinor);
    $("short").hidden = !short;
    if (short) {
      $("short").textContent = "Your wallet holds " + money(st.wallet, q.currency) + ", less than this fee. " +
        (st.cards ? "Pay by card below, or cancel." : "Cancel, and have your wallet funded (your device ID is below).");
    }
  }

  // Add money to the wallet by card (test mode: Stripe's test card): the
  // same request ID until the platform says paid or failed, for at most
  // two minutes.
  async function fund(ev) {
    ev.preventDefault(); clearError();
    const cur = st.hotspot ? st.hotspot.tariff.currency : "EUR";
    const digits = { JPY: 0, KRW: 0, KWD: 3, BHD: 3 }[cur] ?? 2;
    const amount = Math.round(num($("fund-amount").value) * 10 ** digits);
    const id = Array.from(crypto.getRandomValues(new Uint8Array(12)), (x) => x.toString(16).padStart(2, "0")).join(""); // request_id: letters and digits
    $("fund-card").disabled = true;
    $("fund-state").textContent = "Adding " + money(amount, cur) + " by card…";
    try {
      for (const start = Date.now(); ; ) {
        const r = await call("PaymentService", "FundByCard", { requestId: id, amountMinor: String(amount), currency: cur });
        // "Added" only beside the new balance, never beside the old one.
        if (r.status === "PAY_STATUS_PAID") { await balance(); $("fund-state").textContent = "Added " + money(amount, cur) + "."; break; }
        if (r.status === "PAY_STATUS_FAILED") throw new Error("The card payment did not go through: " + (r.failure || "no reason given"));
        if (Date.now() - start > CARD_PATIENCE) throw new Error("The card platform has not confirmed the payment in two minutes; your wallet is credited when it does. Reload later to see it.");
        await new Promise((ok) => setTimeout(ok, 1000));
      }
    } catch (e) { $("fund-state").textContent = ""; throw e; }
    finally { $("fund-card").disabled = false; }
  }
  const CARD_PATIENCE = 120000;
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
    const away = (res.offline || [])[0];
    if (!o && away) throw new Error("This hotspot's host is offline" + (num(away.seenUnixMs) ? " (last there " + ago(num(away.seenUnixMs)) + ")" : "") + ": it cannot sell data now. Try again when it is back, or choose another hotspot.");
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
  // ago says how long ago a Unix time in ms was, in words.
  function ago(ms) {
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 90) return s + " s ago";
    if (s < 90 * 60) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
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
    st.saved = { id: st.session.id, hostId: st.hostId, hpke: st.hpke, admit: st.admit, bssid: params.get("bssid"), ssid: params.get("ssid") };
    await put("session", st.saved);
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
    shortOfMoney();
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
    const id = st.quote.id;
    await call("SessionService", "Confirm", { sessionId: st.session.id, receipt });
    // The host's grant comes by the inbox and can be read before this
    // answer: "waiting" never covers "Online" (or the end).
    if (st.grantedQuote[id] || st.ended) return;
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
    $("card-retry").hidden = true;
    const started = Date.now();
    try {
      await put("card", q.id); // a reload goes on with this payment, never starts a wallet one beside it
      for (let attempt = 0; ; attempt++) {
        if (Date.now() - started > CARD_PATIENCE) {
          // The platform said nothing for two minutes (a test server that
          // sends no webhook, Stripe down): say so rather than wait for
          // ever; the payment is asked about again on "Keep waiting" or
          // a reload, and nothing is taken twice.
          $("card-state").textContent = "The card platform has not confirmed this payment in two minutes.";
          $("card-retry").hidden = false;
          $("card-retry").focus();
          return;
        }
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

  // C1.7–C1.8 / C1.15: open the sealed code here and set this device up
  // with the host's gateway. The sealed grant is kept (beside the session's
  // HPKE key, in IndexedDB), so a reload, a new tab or a restarted browser
  // shows the same setup again.
  async function onGranted(g) {
    st.grantedQuote[g.quoteId] = true;
    st.granted = Math.max(num(g.totalGrantedBytes), st.granted || 0);
    if (!st.admitted && g.sealedCode) {
      st.saved.grant = { gateway: g.gateway || null, sealedCode: g.sealedCode };
      await put("session", st.saved);
      const left = await showAccess(st.saved.grant);
      if (left) return new Promise(() => {}); // the page is leaving; nothing is acknowledged
    }
    st.topUp = false;
    $("prompt").hidden = true;
    say("Online.");
    show("online");
    poll();
  }

  // showAccess opens the kept grant's code and shows how to get online with
  // it; for the kernel gateway, not yet admitted, it leaves for the host's
  // admission page (and reports true).
  async function showAccess(grant) {
    const gw = grant.gateway || {}, sc = grant.sealedCode;
    const info = SharespotHPKE.binding(st.session.id, st.hostId, st.deviceId);
    const code = await SharespotHPKE.open(st.hpke.key, st.hpke.pub, unb64(sc.enc), unb64(sc.ciphertext), info);
    const addr = gw.address || st.admit;
    st.admitted = true;
    if (gw.kind === "proxy") {
      // The userspace gateway: the phone's browser uses it as its proxy
      // (a PAC file from this server) with the session and code as the
      // proxy's credentials, which only this page can show.
      $("pac-url").textContent = location.origin + "/guest/proxy.pac?gw=" + encodeURIComponent(addr);
      $("proxy-user").textContent = st.session.id;
      $("proxy-pass").textContent = SharespotHPKE.formatCode(code);
      $("proxy-setup").hidden = false;
      return false;
    }
    if (gw.kind === "wireguard") {
      const conf = wireguardConf(code, gw);
      // Whole pixels per module (a scaled code blurs its edges), as
      // large as fits a 320 px wide screen.
      const m = SharespotQR.encode(conf);
      $("wg-qr").innerHTML = SharespotQR.svg(m, Math.max(2, Math.floor(296 / (m.length + 8))));
      $("wg-conf").textContent = conf;
      const a = $("wg-download");
      if (a.href.startsWith("blob:")) URL.revokeObjectURL(a.href);
      a.href = URL.createObjectURL(new Blob([conf], { type: "application/octet-stream" }));
      $("wg-setup").hidden = false;
      return false;
    }
    if (st.saved.admitted) return false; // the kernel gateway keeps this address bound
    // This page is HTTPS and the host's endpoint cleartext on the LAN, so
    // the page cannot post to it (mixed content): it goes to the host's
    // admission page with the code in the URL fragment (never sent over
    // the network), which posts it and comes back here with #admitted.
    const frag = new URLSearchParams({ session: st.session.id, code: SharespotHPKE.formatCode(code), back: location.href.split("#")[0] });
    say("Presenting your code to the hotspot…");
    location.assign("http://" + addr + "/admit#" + frag.toString());
    return true;
  }

  // wireguardConf is the WireGuard app's configuration for the session: the
  // access code is its private key (as internal/tunnel writes it).
  function wireguardConf(code, gw) {
    return "[Interface]\nPrivateKey = " + b64(code) + "\nAddress = " + gw.tunnelAddress + "/32\nDNS = " + gw.tunnelGateway + "\nMTU = 1420\n\n" +
      "[Peer]\nPublicKey = " + gw.wireguardPublicKey + "\nEndpoint = " + gw.address + "\nAllowedIPs = 0.0.0.0/0, ::/0\nPersistentKeepalive = 25\n";
  }

  // Used and remaining, live: the session as the server has it.
  async function poll() {
    if (st.polling) return;
    st.polling = true;
    while (st.session && !st.ended) {
      try {
        const res = await call("SessionService", "Get", { sessionId: st.session.id });
        if (st.ended) break; // the inbox said it ended meanwhile: its word stands
        const s = res.session;
        usage(num(s.usedBytes), num(s.grantedBytes));
        if (s.state === "SESSION_STATE_ENDED") { onEnded(s); break; }
        if (s.state === "SESSION_STATE_ENDING") show("ending");
      } catch (e) { /* the next round tries again */ }
      await new Promise((r) => setTimeout(r, 1000));
    }
    st.polling = false;
  }

  // usage shows used and remaining, never going back (the server's view
  // lags the gateway's prompt), all in one unit.
  function usage(used, granted) {
    st.used = Math.max(st.used || 0, used);
    st.granted = Math.max(st.granted || 0, granted);
    const unit = unitFor(st.granted);
    $("used").textContent = size(st.used, unit);
    $("remaining").textContent = size(Math.max(st.granted - st.used, 0), unit);
    $("meter").max = st.granted || 1; $("meter").value = st.used;
  }

  // C1.9–C1.10: the low-quota prompt; C1.11: ask for more.
  function onPrompt(p) {
    usage(num(p.usedBytes), num(p.grantedBytes));
    $("prompt-left").textContent = size(Math.max(st.granted - st.used, 0), unitFor(st.granted));
    $("prompt").hidden = false;
    $("topup-amount").focus();
  }
  async function topUp(ev) {
    ev.preventDefault(); clearError();
    const bytes = Math.round(num($("topup-amount").value) * 1e6);
    const before = st.quote;
    await call("SessionService", "RequestTopUp", { sessionId: st.session.id, bytes: String(bytes) });
    $("prompt").hidden = true;
    // The fee can be read before this answer: then it is on screen.
    if (st.quote === before && !st.ended) say("Top-up requested; waiting for the host's fee…");
  }

  // end ends the session, at any step: before the grant it settles at
  // once (nothing can have flowed), after it the host's final count
  // settles it.
  async function end() {
    clearError();
    if (!st.session) return;
    for (const id of ["end", "wait-cancel", "pay-cancel"]) $(id).disabled = true;
    say("Ending…");
    let s = null;
    try { s = (await call("SessionService", "End", { sessionId: st.session.id, reason: "guest ended" })).session; }
    catch (e) { if (e.code !== "failed_precondition") { for (const id of ["end", "wait-cancel", "pay-cancel"]) $(id).disabled = false; throw e; } }
    if (s && s.state === "SESSION_STATE_ENDED") return onEnded(s);
    if (st.ended) return; // the inbox said it ended while End was answered
    say("Waiting for the host's final count…");
    show("ending");
    poll();
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

  // Resume a session this browser started (after a reload, a new tab, a
  // browser restart or the portal's redirect): it shows the session's real
  // state, and always a way to end it.
  async function resume() {
    const saved = await get("session");
    if (!saved) return false;
    let s;
    try { s = (await call("SessionService", "Get", { sessionId: saved.id })).session; } catch (e) { await del("session"); return false; }
    if (s.state === "SESSION_STATE_ENDED") { await del("session"); return false; }
    st.session = s; st.saved = saved; st.hostId = saved.hostId; st.hpke = saved.hpke; st.admit = saved.admit || st.admit;
    if (location.hash === "#admitted") {
      saved.admitted = true;
      await put("session", saved);
      history.replaceState(null, "", location.pathname + location.search);
    }
    listen();
    if (s.state === "SESSION_STATE_ACTIVE" || s.state === "SESSION_STATE_ENDING") {
      if (saved.grant) {
        if (await showAccess(saved.grant)) return true; // to the host's admission page
      } else {
        $("no-access").hidden = false;
        st.admitted = true;
      }
      usage(num(s.usedBytes), num(s.grantedBytes));
      say(s.state === "SESSION_STATE_ENDING" ? "Ending (resumed)." : "Online (resumed).");
      show(s.state === "SESSION_STATE_ENDING" ? "ending" : "online");
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

  async function copyDevice() {
    const id = $("device").textContent;
    try { await navigator.clipboard.writeText(id); $("copied").textContent = "Copied."; }
    catch (e) {
      // No clipboard (an insecure context, a refusal): select it to copy by hand.
      getSelection().selectAllChildren($("device"));
      $("copied").textContent = "Selected: copy it with your browser's Copy.";
    }
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
    $("fund-form").addEventListener("submit", guard(fund));
    $("card-retry").addEventListener("click", guard(payByCard));
    for (const id of ["end", "wait-cancel", "pay-cancel"]) $(id).addEventListener("click", guard(end));
    $("copy-device").addEventListener("click", guard(copyDevice));
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
