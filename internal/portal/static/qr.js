// A QR code encoder (ISO/IEC 18004): byte mode, error correction level M,
// versions 1 to 20 (up to 666 bytes), the mask with the lowest penalty.
// The guest page draws its WireGuard configuration with it: the access
// code is the configuration's private key, so the code is made here, in
// the browser, never by the server.
"use strict";
(function () {
  // Level M blocks per version: [count, data codewords] groups, and the
  // error correction codewords per block.
  const M = [null,
    [10, [[1, 16]]], [16, [[1, 28]]], [26, [[1, 44]]], [18, [[2, 32]]], [24, [[2, 43]]],
    [16, [[4, 27]]], [18, [[4, 31]]], [22, [[2, 38], [2, 39]]], [22, [[3, 36], [2, 37]]], [26, [[4, 43], [1, 44]]],
    [30, [[1, 50], [4, 51]]], [22, [[6, 36], [2, 37]]], [22, [[8, 37], [1, 38]]], [24, [[4, 40], [5, 41]]], [24, [[5, 41], [5, 42]]],
    [28, [[7, 45], [3, 46]]], [28, [[10, 46], [1, 47]]], [26, [[9, 43], [4, 44]]], [26, [[3, 44], [11, 45]]], [26, [[3, 41], [13, 42]]],
  ];
  const ALIGN = [null, [], [6, 18], [6, 22], [6, 26], [6, 30], [6, 34], [6, 22, 38], [6, 24, 42], [6, 26, 46], [6, 28, 50],
    [6, 30, 54], [6, 32, 58], [6, 34, 62], [6, 26, 46, 66], [6, 26, 48, 70], [6, 26, 50, 74], [6, 30, 54, 78], [6, 30, 56, 82],
    [6, 30, 58, 86], [6, 34, 62, 90]];
  const dataCodewords = (v) => M[v][1].reduce((s, [n, d]) => s + n * d, 0);

  // GF(256), polynomial 0x11d.
  const EXP = new Uint8Array(512), LOG = new Uint8Array(256);
  for (let i = 0, x = 1; i < 255; i++) { EXP[i] = x; LOG[x] = i; x <<= 1; if (x & 256) x ^= 0x11d; }
  for (let i = 255; i < 512; i++) EXP[i] = EXP[i - 255];
  const mul = (a, b) => (a && b ? EXP[LOG[a] + LOG[b]] : 0);
  function ecc(data, n) {
    let gen = [1];
    for (let i = 0; i < n; i++) {
      const next = new Array(gen.length + 1).fill(0);
      for (let j = 0; j < gen.length; j++) { next[j] ^= gen[j]; next[j + 1] ^= mul(gen[j], EXP[i]); }
      gen = next;
    }
    const rem = new Array(n).fill(0);
    for (const d of data) {
      const f = d ^ rem.shift();
      rem.push(0);
      for (let j = 0; j < n; j++) rem[j] ^= mul(gen[j + 1], f);
    }
    return rem;
  }

  // The codewords of bytes at version v: mode, count, data, terminator,
  // padding, split into blocks with their error correction, interleaved.
  function codewords(bytes, v) {
    const bits = [];
    const put = (val, len) => { for (let i = len - 1; i >= 0; i--) bits.push((val >>> i) & 1); };
    const cap = dataCodewords(v) * 8;
    put(4, 4);
    put(bytes.length, v < 10 ? 8 : 16);
    for (const b of bytes) put(b, 8);
    put(0, Math.min(4, cap - bits.length));
    while (bits.length % 8) bits.push(0);
    const data = [];
    for (let i = 0; i < bits.length; i += 8) data.push(bits.slice(i, i + 8).reduce((a, b) => (a << 1) | b, 0));
    for (let pad = 0xec; data.length < cap / 8; pad ^= 0xec ^ 0x11) data.push(pad);
    const blocks = [];
    let at = 0;
    for (const [n, d] of M[v][1]) for (let i = 0; i < n; i++) { blocks.push(data.slice(at, at + d)); at += d; }
    const eccs = blocks.map((b) => ecc(b, M[v][0]));
    const out = [];
    for (let i = 0; i < Math.max(...blocks.map((b) => b.length)); i++) for (const b of blocks) if (i < b.length) out.push(b[i]);
    for (let i = 0; i < M[v][0]; i++) for (const e of eccs) out.push(e[i]);
    return out;
  }

  // bch is the remainder of value << (bits of poly - 1) by poly, appended.
  function bch(value, poly) {
    const deg = 31 - Math.clz32(poly);
    let r = value << deg;
    while (31 - Math.clz32(r) >= deg) r ^= poly << (31 - Math.clz32(r) - deg);
    return (value << deg) | r;
  }

  const MASKS = [
    (r, c) => (r + c) % 2 === 0, (r) => r % 2 === 0, (r, c) => c % 3 === 0, (r, c) => (r + c) % 3 === 0,
    (r, c) => (Math.floor(r / 2) + Math.floor(c / 3)) % 2 === 0, (r, c) => ((r * c) % 2) + ((r * c) % 3) === 0,
    (r, c) => (((r * c) % 2) + ((r * c) % 3)) % 2 === 0, (r, c) => (((r + c) % 2) + ((r * c) % 3)) % 2 === 0,
  ];

  // symbol lays out version v with codewords cw under mask k.
  function symbol(v, cw, k) {
    const n = 17 + 4 * v;
    const m = Array.from({ length: n }, () => new Array(n).fill(0));
    const fixed = Array.from({ length: n }, () => new Array(n).fill(false));
    const set = (r, c, on) => { m[r][c] = on ? 1 : 0; fixed[r][c] = true; };
    const finder = (r0, c0) => {
      for (let r = -1; r <= 7; r++) for (let c = -1; c <= 7; c++) {
        const rr = r0 + r, cc = c0 + c;
        if (rr < 0 || cc < 0 || rr >= n || cc >= n) continue;
        const ring = Math.max(Math.abs(r - 3), Math.abs(c - 3));
        set(rr, cc, ring !== 2 && ring !== 4);
      }
    };
    finder(0, 0); finder(0, n - 7); finder(n - 7, 0);
    for (let i = 8; i < n - 8; i++) { set(6, i, i % 2 === 0); set(i, 6, i % 2 === 0); }
    const al = ALIGN[v], last = al.length - 1;
    al.forEach((r, i) => al.forEach((c, j) => {
      if (i === 0 && j === 0 || i === 0 && j === last || i === last && j === 0) return; // under a finder
      for (let dr = -2; dr <= 2; dr++) for (let dc = -2; dc <= 2; dc++) set(r + dr, c + dc, Math.max(Math.abs(dr), Math.abs(dc)) !== 1);
    }));
    set(n - 8, 8, true); // the dark module
    // Format information: level M (00) and the mask, BCH(15,5), masked.
    const fmt = bch(k, 0x537) ^ 0x5412;
    for (let i = 0; i < 15; i++) {
      const on = (fmt >>> i) & 1;
      if (i < 6) set(i, 8, on); else if (i < 8) set(i + 1, 8, on); else if (i === 8) set(8, 7, on); else set(8, 14 - i, on);
      if (i < 8) set(8, n - 1 - i, on); else set(n - 15 + i, 8, on);
    }
    if (v >= 7) {
      const vi = bch(v, 0x1f25);
      for (let i = 0; i < 18; i++) {
        const on = (vi >>> i) & 1, r = Math.floor(i / 3), c = n - 11 + (i % 3);
        set(r, c, on); set(c, r, on);
      }
    }
    // The data, two columns at a time from the bottom right, upwards
    // then downwards, skipping the vertical timing pattern.
    let bit = 0;
    const total = cw.length * 8;
    for (let right = n - 1, up = true; right > 0; right -= 2, up = !up) {
      if (right === 6) right = 5;
      for (let i = 0; i < n; i++) {
        const r = up ? n - 1 - i : i;
        for (const c of [right, right - 1]) {
          if (fixed[r][c]) continue;
          let on = bit < total ? (cw[bit >>> 3] >>> (7 - (bit & 7))) & 1 : 0;
          bit++;
          if (MASKS[k](r, c)) on ^= 1;
          m[r][c] = on;
        }
      }
    }
    return m;
  }

  // penalty scores a symbol by the standard's four rules.
  function penalty(m) {
    const n = m.length;
    let p = 0;
    const line = (get) => {
      for (let i = 0; i < n; i++) {
        let run = 1;
        for (let j = 1; j <= n; j++) {
          if (j < n && get(i, j) === get(i, j - 1)) { run++; continue; }
          if (run >= 5) p += run - 2;
          run = 1;
        }
        for (let j = 0; j + 11 <= n; j++) {
          const s = Array.from({ length: 11 }, (_, x) => get(i, j + x)).join("");
          if (s === "10111010000" || s === "00001011101") p += 40;
        }
      }
    };
    line((i, j) => m[i][j]);
    line((i, j) => m[j][i]);
    let dark = 0;
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
      dark += m[r][c];
      if (r + 1 < n && c + 1 < n && m[r][c] === m[r + 1][c] && m[r][c] === m[r][c + 1] && m[r][c] === m[r + 1][c + 1]) p += 3;
    }
    p += Math.floor(Math.abs((dark * 100) / (n * n) - 50) / 5) * 10;
    return p;
  }

  // encode returns the modules of text's QR code (rows of 0 and 1).
  function encode(text) {
    const bytes = new TextEncoder().encode(text);
    let v = 1;
    while (v <= 20 && 4 + (v < 10 ? 8 : 16) + bytes.length * 8 > dataCodewords(v) * 8) v++;
    if (v > 20) throw new Error("QR: " + bytes.length + " bytes is more than a version 20 code holds");
    const cw = codewords(bytes, v);
    let best = null, bestP = Infinity;
    for (let k = 0; k < 8; k++) {
      const s = symbol(v, cw, k), p = penalty(s);
      if (p < bestP) { best = s; bestP = p; }
    }
    return best;
  }

  // svg draws the modules with a four-module quiet zone.
  function svg(m, px) {
    const n = m.length, q = 4, size = (n + 2 * q) * px;
    let d = "";
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) if (m[r][c]) d += "M" + (c + q) * px + " " + (r + q) * px + "h" + px + "v" + px + "h-" + px + "z";
    return '<svg xmlns="http://www.w3.org/2000/svg" width="' + size + '" height="' + size + '" viewBox="0 0 ' + size + " " + size +
      '" shape-rendering="crispEdges"><rect width="100%" height="100%" fill="#fff"/><path fill="#000" d="' + d + '"/></svg>';
  }

  window.SharespotQR = { encode, svg };
})();
