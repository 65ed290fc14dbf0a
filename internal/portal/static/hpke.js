// HPKE (RFC 9180) base-mode single-shot open for the suite Sharespot seals
// access codes with: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// ChaCha20-Poly1305. X25519 and HMAC-SHA256 come from WebCrypto; WebCrypto
// has no ChaCha20-Poly1305, so the AEAD is written out below (RFC 8439) and
// checked in the browser test against codes sealed by Go's crypto/hpke.
"use strict";
(function () {
  const te = new TextEncoder();
  const concat = (...parts) => {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  };
  const i2osp = (n, len) => { const b = new Uint8Array(len); for (let i = len - 1; i >= 0; i--) { b[i] = n & 255; n = Math.floor(n / 256); } return b; };

  // ---- ChaCha20 (RFC 8439 §2.3–2.4)
  function rotl(v, c) { return ((v << c) | (v >>> (32 - c))) >>> 0; }
  function block(key, counter, nonce) {
    const s = new Uint32Array(16);
    s[0] = 0x61707865; s[1] = 0x3320646e; s[2] = 0x79622d32; s[3] = 0x6b206574;
    const kv = new DataView(key.buffer, key.byteOffset, 32);
    for (let i = 0; i < 8; i++) s[4 + i] = kv.getUint32(4 * i, true);
    s[12] = counter >>> 0;
    const nv = new DataView(nonce.buffer, nonce.byteOffset, 12);
    for (let i = 0; i < 3; i++) s[13 + i] = nv.getUint32(4 * i, true);
    const x = Uint32Array.from(s);
    const qr = (a, b, c, d) => {
      x[a] = (x[a] + x[b]) >>> 0; x[d] = rotl(x[d] ^ x[a], 16);
      x[c] = (x[c] + x[d]) >>> 0; x[b] = rotl(x[b] ^ x[c], 12);
      x[a] = (x[a] + x[b]) >>> 0; x[d] = rotl(x[d] ^ x[a], 8);
      x[c] = (x[c] + x[d]) >>> 0; x[b] = rotl(x[b] ^ x[c], 7);
    };
    for (let i = 0; i < 10; i++) {
      qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15);
      qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14);
    }
    const out = new Uint8Array(64);
    const ov = new DataView(out.buffer);
    for (let i = 0; i < 16; i++) ov.setUint32(4 * i, (x[i] + s[i]) >>> 0, true);
    return out;
  }
  function chacha20(key, counter, nonce, data) {
    const out = new Uint8Array(data.length);
    for (let off = 0, c = counter; off < data.length; off += 64, c++) {
      const ks = block(key, c, nonce);
      for (let i = 0; i < 64 && off + i < data.length; i++) out[off + i] = data[off + i] ^ ks[i];
    }
    return out;
  }

  // ---- Poly1305 (RFC 8439 §2.5), with BigInt: the inputs are a few dozen bytes.
  const le = (b) => { let n = 0n; for (let i = b.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(b[i]); return n; };
  function poly1305(key, msg) {
    const r = le(key.subarray(0, 16)) & 0x0ffffffc0ffffffc0ffffffc0fffffffn;
    const s = le(key.subarray(16, 32));
    const p = (1n << 130n) - 5n;
    let acc = 0n;
    for (let off = 0; off < msg.length; off += 16) {
      const chunk = msg.subarray(off, Math.min(off + 16, msg.length));
      acc = ((acc + le(chunk) + (1n << BigInt(8 * chunk.length))) * r) % p;
    }
    let tag = (acc + s) & ((1n << 128n) - 1n);
    const out = new Uint8Array(16);
    for (let i = 0; i < 16; i++) { out[i] = Number(tag & 255n); tag >>= 8n; }
    return out;
  }
  const pad16 = (n) => new Uint8Array((16 - (n % 16)) % 16);
  const le64 = (n) => { const b = new Uint8Array(8); new DataView(b.buffer).setUint32(0, n, true); return b; };

  // chachaPolyOpen decrypts ct (tag included) or throws.
  function chachaPolyOpen(key, nonce, aad, ct) {
    if (ct.length < 16) throw new Error("ciphertext too short");
    const body = ct.subarray(0, ct.length - 16), tag = ct.subarray(ct.length - 16);
    const otk = block(key, 0, nonce).subarray(0, 32);
    const want = poly1305(otk, concat(aad, pad16(aad.length), body, pad16(body.length), le64(aad.length), le64(body.length)));
    let diff = 0;
    for (let i = 0; i < 16; i++) diff |= want[i] ^ tag[i];
    if (diff !== 0) throw new Error("authentication failed (wrong key or binding, or altered code)");
    return chacha20(key, 1, nonce, body);
  }

  // ---- HKDF-SHA256 pieces through WebCrypto HMAC.
  async function hmac(key, data) {
    // A zero-length HMAC key equals 32 zero bytes (both are zero-padded to the block size).
    const k = await crypto.subtle.importKey("raw", key.length ? key : new Uint8Array(32), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await crypto.subtle.sign("HMAC", k, data));
  }
  const extract = (salt, ikm) => hmac(salt, ikm);
  async function expand(prk, info, len) {
    let t = new Uint8Array(0), out = new Uint8Array(0);
    for (let i = 1; out.length < len; i++) {
      t = await hmac(prk, concat(t, info, new Uint8Array([i])));
      out = concat(out, t);
    }
    return out.subarray(0, len);
  }
  const V1 = te.encode("HPKE-v1");
  const labeledExtract = (suite, salt, label, ikm) => extract(salt, concat(V1, suite, te.encode(label), ikm));
  const labeledExpand = (suite, prk, label, info, len) => expand(prk, concat(i2osp(len, 2), V1, suite, te.encode(label), info), len);

  const KEM_SUITE = concat(te.encode("KEM"), i2osp(0x0020, 2));
  const HPKE_SUITE = concat(te.encode("HPKE"), i2osp(0x0020, 2), i2osp(0x0001, 2), i2osp(0x0003, 2));
  const empty = new Uint8Array(0);

  // open: skR is a WebCrypto X25519 private key (usage deriveBits), pkR its
  // raw public key, enc the 32-byte encapsulated key, ct the ciphertext,
  // info the binding.
  async function open(skR, pkR, enc, ct, info) {
    if (enc.length !== 32) throw new Error("enc is " + enc.length + " bytes, want 32");
    const pkE = await crypto.subtle.importKey("raw", enc, { name: "X25519" }, false, []);
    const dh = new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: pkE }, skR, 256));
    const eaePrk = await labeledExtract(KEM_SUITE, empty, "eae_prk", dh);
    const shared = await labeledExpand(KEM_SUITE, eaePrk, "shared_secret", concat(enc, pkR), 32);
    const pskIdHash = await labeledExtract(HPKE_SUITE, empty, "psk_id_hash", empty);
    const infoHash = await labeledExtract(HPKE_SUITE, empty, "info_hash", info);
    const ctx = concat(new Uint8Array([0]), pskIdHash, infoHash);
    const secret = await labeledExtract(HPKE_SUITE, shared, "secret", empty);
    const key = await labeledExpand(HPKE_SUITE, secret, "key", ctx, 32);
    const nonce = await labeledExpand(HPKE_SUITE, secret, "base_nonce", ctx, 12);
    return chachaPolyOpen(key, nonce, empty, ct);
  }

  // binding is internal/seal's HPKE info: a label and three fields, each
  // behind a 2-byte big-endian length.
  function binding(sessionId, hostId, guestId) {
    const parts = [];
    for (const f of ["sharespot/seal/v1", sessionId, hostId, guestId]) {
      const b = te.encode(f);
      if (b.length === 0 || b.length > 256) throw new Error("binding field of " + b.length + " bytes");
      parts.push(i2osp(b.length, 2), b);
    }
    return concat(...parts);
  }

  // formatCode is internal/seal's FormatCode: lower-case base32, no padding.
  function formatCode(code) {
    const alpha = "abcdefghijklmnopqrstuvwxyz234567";
    let out = "", bits = 0, v = 0;
    for (const b of code) {
      v = (v << 8) | b; bits += 8;
      while (bits >= 5) { out += alpha[(v >>> (bits - 5)) & 31]; bits -= 5; }
    }
    if (bits > 0) out += alpha[(v << (5 - bits)) & 31];
    return out;
  }

  window.SharespotHPKE = { open, binding, formatCode, chachaPolyOpen, suite: "x25519-hkdf-sha256-chacha20poly1305" };
})();
