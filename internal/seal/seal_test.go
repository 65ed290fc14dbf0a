package seal

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustKey(t testing.TB, s Suite) *PrivateKey {
	t.Helper()
	k, err := GenerateKey(s)
	if err != nil {
		t.Fatalf("GenerateKey(%q): %v", s, err)
	}
	return k
}

var testBinding = Binding{
	SessionID: "0b6f1f7e-5c4a-4f7e-9d7e-3f2a1c9b8a70",
	HostID:    "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2",
	GuestID:   "EH7DDX5-BKSRGCK-YTL7BKA-I36SE4E-NXX3KLN-K7ELKS5-YQ57PI7-4XEG4QG",
}

// RFC 9180 Appendix A.2.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// ChaCha20Poly1305, Base Setup) and A.2.1.1, sequence number 0.
const (
	kat2SkRm = "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb"
	kat2PkRm = "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a"
	kat2Info = "4f6465206f6e2061204772656369616e2055726e"
	kat2Enc  = "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a"
	kat2Aad  = "436f756e742d30"
	kat2Pt   = "4265617574792069732074727574682c20747275746820626561757479"
	kat2Ct   = "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28"
)

// Hybrid vector: the Go source tree's src/crypto/hpke/testdata/hpke-pq.json
// (draft-ietf-hpke-pq test vectors), mode 0, KEM 0x647a MLKEM768-X25519,
// KDF 0x0001 HKDF-SHA256, AEAD 0x0003 ChaCha20Poly1305, encryptions[0].
// pkRm is given as its SHA-256 to keep the file short.
const (
	katHSkRm       = "b3f98b03126a431ccecc62ae0f68e102c2d8e1cc7b21ba85d821d8e31761e0f8"
	katHPkRmSHA256 = "120b60e0ae3c00c1c9def1c61aeb12de710bfa49646ae6f99a7e564b25ace493"
	katHInfo       = "34663634363532303666366532303631323034373732363536333639363136653230353537323665"
	katHEnc        = "b440cb006466e8ee9d161b371b6fa1ec419d6a7589492378dc678fedbcf9e7debfb47f7e0b5368b0e77ef5b5866686b6" +
		"5231dbd1c1a42e0af9b0abb06c795a1af0734b450dbb60fe0486b1497d7b09d0c46617a40c5f8c8ab51c2e8e1f48023f" +
		"73b7c4716bba2e905d5fb42c3dedff166553ecf033305a57bf436317e6513deea2f65537065bb5d82dc4b8a965c3e939" +
		"b910dc6b027e01673a6e1399b93976292ef9fd81120ef2f6c47d94a1c77d9fe16ba7107a8a6a4ce9ce0d302847d60216" +
		"7de077e17dbb7e0154202f76c381c4b6d8bca51680dab4dbf373da8f09aa23d2174fb36681ce42108f7baadcb35626ba" +
		"f30a416bd79b3e249585079c277b79b7b31108ef061f25b5d4e548f6f5cc3d4c24fa0f1716843bb63ad00a78f37d2e2b" +
		"81517810abe9853829bed7b3ba309ad697d8a5f66af4dd237c25725e9c6263744bf8641d475d4792ab0535d2b4fdfcf0" +
		"c5d95118f5779521023016d49751794a1ce66f2a652436843978937562a4a5e8628d2b720890d7f3b21c151399ba7db0" +
		"3cd15516c6a94b84f6d01a37ba92cc7ac6c480dc9f67c3a066378180bcd2922d3f5c65d69fd0b96aadc055d6b05ebb11" +
		"05acc609f200e0c945a10e4e11371e23369de2069ccd7175a652c3cd09eb7f17c9b65b4aa79b26468f9b21f8c0aa8f74" +
		"71d5cfbf3697d3eedea9351597ce981e7cf745c2950070c1f82f132b48584d03ba1262cb856ff6b5ae25992df8612d24" +
		"f068b4325d3360673ed3ef6e2a57de297d5482c5cc355bc07f1d975fc6d60cd7109bf5a77a0ff7b2c5d9f4a276d30cb4" +
		"9da48b8b90b644b15a5b68fcc67c25f09a8e567cbe4fa2e2ba11c02993e9e9b4116a7c60da64a71932800aec2fb4d2ec" +
		"eef57c6fc2308f3adcd9b46a28748516284bdb4b3a36851512c5e0e6ed37ef5f00b07dc3c42667cf95cad764e47f48a9" +
		"94d17c103f8225755c76008013897c03c31043df0eb39a603e09caeaa41ae24488fe96e4d83b4ae5481045f4a7cfd7c8" +
		"0b31ce9eeb8fdecd34be1245f368ab5a3215cbcdfbe0529e1fbc4ba0041cfaba09836c25dd6219e75fbc6f143e74d686" +
		"ecd9e1a416881bc21a9129fb865e82332985798f701f7952c4e69e7b4e6bd03bffdc0c65e2a2fde89f73b8659fd2cc7d" +
		"fb070d3e95581d1bc587a2d9c4bf142fdc1f20856d3cfb64d35744ee279b829184723221e9fb19f012ab99c4bb1a904a" +
		"116727b667c5a11a0e11f3e31682b0c114345ecc3ee153bccd884654bd5a8a023aa3db878148736f6a090f92785423a9" +
		"ba2b037b3b90ee91657ba48a125360dae75a6fddfea406ca823a5e4fbb54aa8909fbd85d95d2ed256ed5d6a9194fad0d" +
		"81a44d3172abf6b90cecd1ed2080762d670db4d3437ef8e9e7d39db4b4215c33f8d19240ed4bf2de8b1076b345707043" +
		"a735bf9e96e16c8b670cf2df0ce8db638c7d84a13ee7b35266c7f0e60d2cb2e5734e9d646a871d0dfd8b4ee5f825bf79" +
		"9a1251ed21e54510e9c605bc83a0bd9673aee80e8d064a95c3c3151ffd27608173637fb9de30b3c02d96eecac05dbf7c" +
		"2fbc98b4a1f6972ce928322a22e2b75c"
	katHAad = "436f756e742d30"
	katHPt  = "343236353631373537343739323036393733323037343732373537343638326332303734373237353734363832303632" +
		"36353631373537343739"
	katHCt = "ac355d192158cd54250e1702be51e9d2eafe5f9292a9f153e02a2323e1ff071a30947836c38c63c986c28ccf05e00d4e" +
		"5fe066a48ab8d5b39c69d32da80c93dc868daa0f853a6cbdd640"
)

func TestKnownAnswer(t *testing.T) {
	type vector struct {
		suite     Suite
		skRm      string
		checkPub  func(t *testing.T, pub []byte)
		wantBytes string
		info      string
		enc       string
		aad       string
		pt        string
		ct        string
	}
	vectors := []struct {
		name string
		v    vector
	}{
		{"RFC 9180 A.2.1", vector{
			suite: SuiteX25519ChaCha,
			skRm:  kat2SkRm,
			checkPub: func(t *testing.T, pub []byte) {
				if got := hex.EncodeToString(pub); got != kat2PkRm {
					t.Errorf("PublicKey() = %s, want %s", got, kat2PkRm)
				}
			},
			// RFC 9180 section 7.1.2: SerializePrivateKey clamps X25519
			// scalars.
			wantBytes: "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e07b",
			info:      kat2Info, enc: kat2Enc, aad: kat2Aad, pt: kat2Pt, ct: kat2Ct,
		}},
		{"hpke-pq MLKEM768-X25519", vector{
			suite: SuiteMLKEM768X25519,
			skRm:  katHSkRm,
			checkPub: func(t *testing.T, pub []byte) {
				if got := sha256.Sum256(pub); hex.EncodeToString(got[:]) != katHPkRmSHA256 {
					t.Errorf("SHA-256(PublicKey()) = %x, want %s", got, katHPkRmSHA256)
				}
			},
			wantBytes: katHSkRm,
			info:      katHInfo, enc: katHEnc, aad: katHAad, pt: katHPt, ct: katHCt,
		}},
	}
	for _, vec := range vectors {
		v := vec.v
		priv, err := ParsePrivateKey(v.suite, mustHex(t, v.skRm))
		if err != nil {
			t.Fatalf("%s: ParsePrivateKey: %v", vec.name, err)
		}
		t.Run(vec.name+"/keys", func(t *testing.T) {
			v.checkPub(t, priv.PublicKey())
			if got := hex.EncodeToString(priv.Bytes()); got != v.wantBytes {
				t.Errorf("Bytes() = %s, want %s", got, v.wantBytes)
			}
		})
		altered := mustHex(t, v.ct)
		altered[len(altered)-1] ^= 1
		tests := []struct {
			name    string
			info    []byte
			aad     []byte
			ct      []byte
			wantErr bool
		}{
			{name: "vector", info: mustHex(t, v.info), aad: mustHex(t, v.aad), ct: mustHex(t, v.ct)},
			{name: "altered tag", info: mustHex(t, v.info), aad: mustHex(t, v.aad), ct: altered, wantErr: true},
			{name: "other info", info: append(mustHex(t, v.info), 0), aad: mustHex(t, v.aad), ct: mustHex(t, v.ct), wantErr: true},
			{name: "other aad", info: mustHex(t, v.info), aad: nil, ct: mustHex(t, v.ct), wantErr: true},
		}
		for _, tt := range tests {
			t.Run(vec.name+"/"+tt.name, func(t *testing.T) {
				got, err := open(priv, tt.info, tt.aad, mustHex(t, v.enc), tt.ct)
				if tt.wantErr {
					if !errors.Is(err, ErrDecrypt) {
						t.Fatalf("open = %x, %v; want %v", got, err, ErrDecrypt)
					}
					return
				}
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				if hex.EncodeToString(got) != v.pt {
					t.Errorf("open = %x, want %s", got, v.pt)
				}
			})
		}
	}
}

func TestParseSuite(t *testing.T) {
	tests := []struct {
		in      string
		want    Suite
		wantErr bool
	}{
		{in: "x25519-hkdf-sha256-chacha20poly1305", want: SuiteX25519ChaCha},
		{in: "mlkem768x25519-hkdf-sha256-chacha20poly1305", want: SuiteMLKEM768X25519},
		{in: "", wantErr: true},
		{in: "X25519-HKDF-SHA256-CHACHA20POLY1305", wantErr: true},
		{in: "x25519-hkdf-sha256-aes128gcm", wantErr: true},
		{in: "x25519-hkdf-sha256-chacha20poly1305 ", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSuite(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrUnknownSuite) {
					t.Fatalf("ParseSuite(%q) = %q, %v; want %v", tt.in, got, err, ErrUnknownSuite)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseSuite(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestSuites(t *testing.T) {
	got := Suites()
	want := []Suite{SuiteMLKEM768X25519, SuiteX25519ChaCha}
	if len(got) != len(want) {
		t.Fatalf("Suites() = %q, want %q", got, want)
	}
	for i := range want {
		t.Run(string(want[i]), func(t *testing.T) {
			if got[i] != want[i] {
				t.Errorf("Suites()[%d] = %q, want %q", i, got[i], want[i])
			}
			if _, err := ParseSuite(string(got[i])); err != nil {
				t.Errorf("ParseSuite(Suites()[%d]): %v", i, err)
			}
		})
	}
	got[0] = "changed"
	if Suites()[0] != SuiteMLKEM768X25519 {
		t.Errorf("Suites() returned shared state")
	}
	if Preset != SuiteX25519ChaCha {
		t.Errorf("Preset = %q, want %q", Preset, SuiteX25519ChaCha)
	}
}

func TestRoundTrip(t *testing.T) {
	code, err := NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		suite      Suite
		code       []byte
		pubLen     int
		encLen     int
		privLen    int
		persistKey bool
	}{
		{"preset", SuiteX25519ChaCha, code, 32, 32, 32, false},
		{"preset persisted key", SuiteX25519ChaCha, code, 32, 32, 32, true},
		{"hybrid", SuiteMLKEM768X25519, code, 1184 + 32, 1088 + 32, 32, false},
		{"hybrid persisted key", SuiteMLKEM768X25519, code, 1184 + 32, 1088 + 32, 32, true},
		{"shortest code", Preset, []byte{0}, 32, 32, 32, false},
		{"longest code", Preset, bytes.Repeat([]byte{0xa5}, MaxCodeLen), 32, 32, 32, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			guest := mustKey(t, tt.suite)
			if guest.Suite() != tt.suite {
				t.Errorf("Suite() = %q, want %q", guest.Suite(), tt.suite)
			}
			if n := len(guest.PublicKey()); n != tt.pubLen {
				t.Errorf("len(PublicKey()) = %d, want %d", n, tt.pubLen)
			}
			if n := len(guest.Bytes()); n != tt.privLen {
				t.Errorf("len(Bytes()) = %d, want %d", n, tt.privLen)
			}
			sealed, err := Seal(tt.suite, guest.PublicKey(), testBinding, tt.code)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if sealed.Suite != tt.suite {
				t.Errorf("sealed.Suite = %q, want %q", sealed.Suite, tt.suite)
			}
			if n := len(sealed.Enc); n != tt.encLen {
				t.Errorf("len(Enc) = %d, want %d", n, tt.encLen)
			}
			if n := len(sealed.Ciphertext); n != len(tt.code)+tagSize {
				t.Errorf("len(Ciphertext) = %d, want %d", n, len(tt.code)+tagSize)
			}
			opener := guest
			if tt.persistKey {
				opener, err = ParsePrivateKey(tt.suite, guest.Bytes())
				if err != nil {
					t.Fatalf("ParsePrivateKey(Bytes()): %v", err)
				}
				if !bytes.Equal(opener.PublicKey(), guest.PublicKey()) {
					t.Fatalf("persisted key has another public key")
				}
			}
			got, err := Open(opener, testBinding, sealed)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tt.code) {
				t.Errorf("Open returned another code")
			}
		})
	}
}

func TestBytesIsACopy(t *testing.T) {
	k := mustKey(t, Preset)
	b := k.Bytes()
	b[0] ^= 0xff
	if bytes.Equal(k.Bytes(), b) {
		t.Fatal("Bytes() aliases the key")
	}
}

func TestCiphertextHidesCode(t *testing.T) {
	for _, s := range Suites() {
		t.Run(string(s), func(t *testing.T) {
			guest := mustKey(t, s)
			code, err := NewAccessCode()
			if err != nil {
				t.Fatal(err)
			}
			a, err := Seal(s, guest.PublicKey(), testBinding, code)
			if err != nil {
				t.Fatal(err)
			}
			b, err := Seal(s, guest.PublicKey(), testBinding, code)
			if err != nil {
				t.Fatal(err)
			}
			for _, blob := range [][]byte{a.Enc, a.Ciphertext, b.Ciphertext} {
				if bytes.Contains(blob, code) || bytes.Contains(blob, code[:8]) {
					t.Error("sealed output contains the code")
				}
			}
			if bytes.Equal(a.Ciphertext, b.Ciphertext) || bytes.Equal(a.Enc, b.Enc) {
				t.Error("sealing twice gave the same output")
			}
		})
	}
}

func flipped(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x01
	return c
}

func TestOpenRejects(t *testing.T) {
	code, err := NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range Suites() {
		guest := mustKey(t, s)
		sealed, err := Seal(s, guest.PublicKey(), testBinding, code)
		if err != nil {
			t.Fatal(err)
		}
		otherSuite := SuiteX25519ChaCha
		if s == SuiteX25519ChaCha {
			otherSuite = SuiteMLKEM768X25519
		}
		otherSuiteKey := mustKey(t, otherSuite)
		withBinding := func(f func(*Binding)) Binding {
			b := testBinding
			f(&b)
			return b
		}
		withSealed := func(f func(*Sealed)) Sealed {
			c := Sealed{Suite: sealed.Suite, Enc: bytes.Clone(sealed.Enc), Ciphertext: bytes.Clone(sealed.Ciphertext)}
			f(&c)
			return c
		}
		tests := []struct {
			name    string
			priv    *PrivateKey
			binding Binding
			sealed  Sealed
			wantErr error
			wantMsg string
		}{
			{"nil key", nil, testBinding, sealed, nil, "no private key"},
			{"key of other suite", otherSuiteKey, testBinding, sealed, ErrSuiteMismatch, "suite mismatch"},
			{"suite relabelled", guest, testBinding, withSealed(func(c *Sealed) { c.Suite = otherSuite }), ErrSuiteMismatch, "suite mismatch"},
			{"unknown suite", guest, testBinding, withSealed(func(c *Sealed) { c.Suite = "x" }), ErrSuiteMismatch, "suite mismatch"},
			{"wrong key", mustKey(t, s), testBinding, sealed, ErrDecrypt, "authentication failed"},
			{"other session", guest, withBinding(func(b *Binding) { b.SessionID += "x" }), sealed, ErrDecrypt, "authentication failed"},
			{"other host", guest, withBinding(func(b *Binding) { b.HostID = "AAAAAAA" }), sealed, ErrDecrypt, "authentication failed"},
			{"other guest", guest, withBinding(func(b *Binding) { b.GuestID = b.HostID }), sealed, ErrDecrypt, "authentication failed"},
			{"host and guest swapped", guest, withBinding(func(b *Binding) { b.HostID, b.GuestID = b.GuestID, b.HostID }), sealed, ErrDecrypt, "authentication failed"},
			{"field boundary moved", guest, withBinding(func(b *Binding) {
				b.SessionID, b.HostID = b.SessionID+b.HostID[:1], b.HostID[1:]
			}), sealed, ErrDecrypt, "authentication failed"},
			{"empty session", guest, withBinding(func(b *Binding) { b.SessionID = "" }), sealed, ErrMalformed, "session ID is 0 bytes"},
			{"long guest", guest, withBinding(func(b *Binding) { b.GuestID = strings.Repeat("G", MaxBindingFieldLen+1) }), sealed, ErrMalformed, "guest ID is 257 bytes"},
			{"enc first byte", guest, testBinding, withSealed(func(c *Sealed) { c.Enc = flipped(c.Enc, 0) }), ErrDecrypt, "decryption failed"},
			{"enc last byte", guest, testBinding, withSealed(func(c *Sealed) { c.Enc = flipped(c.Enc, len(c.Enc)-1) }), ErrDecrypt, "decryption failed"},
			{"enc truncated", guest, testBinding, withSealed(func(c *Sealed) { c.Enc = c.Enc[:len(c.Enc)-1] }), ErrMalformed, "enc is"},
			{"enc extended", guest, testBinding, withSealed(func(c *Sealed) { c.Enc = append(c.Enc, 0) }), ErrMalformed, "enc is"},
			{"enc empty", guest, testBinding, withSealed(func(c *Sealed) { c.Enc = nil }), ErrMalformed, "enc is 0 bytes"},
			{"ciphertext first byte", guest, testBinding, withSealed(func(c *Sealed) { c.Ciphertext = flipped(c.Ciphertext, 0) }), ErrDecrypt, "authentication failed"},
			{"tag last byte", guest, testBinding, withSealed(func(c *Sealed) { c.Ciphertext = flipped(c.Ciphertext, len(c.Ciphertext)-1) }), ErrDecrypt, "authentication failed"},
			{"ciphertext truncated by one", guest, testBinding, withSealed(func(c *Sealed) { c.Ciphertext = c.Ciphertext[:len(c.Ciphertext)-1] }), ErrDecrypt, "authentication failed"},
			{"ciphertext extended by one", guest, testBinding, withSealed(func(c *Sealed) { c.Ciphertext = append(c.Ciphertext, 0) }), ErrDecrypt, "authentication failed"},
			{"ciphertext only a tag", guest, testBinding, withSealed(func(c *Sealed) { c.Ciphertext = c.Ciphertext[:tagSize] }), ErrMalformed, "ciphertext is 16 bytes"},
			{"ciphertext empty", guest, testBinding, withSealed(func(c *Sealed) { c.Ciphertext = nil }), ErrMalformed, "ciphertext is 0 bytes"},
			{"ciphertext too long", guest, testBinding, withSealed(func(c *Sealed) { c.Ciphertext = make([]byte, MaxCodeLen+tagSize+1) }), ErrMalformed, "ciphertext is 1041 bytes"},
		}
		for _, tt := range tests {
			t.Run(string(s)+"/"+tt.name, func(t *testing.T) {
				got, err := Open(tt.priv, tt.binding, tt.sealed)
				if err == nil {
					t.Fatalf("Open succeeded, returned %d bytes", len(got))
				}
				if got != nil {
					t.Errorf("Open returned data with an error")
				}
				if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("Open error %q, want %v", err, tt.wantErr)
				}
				msg := err.Error()
				if !strings.HasPrefix(msg, "seal: open access code: ") {
					t.Errorf("error %q lacks the prefix", msg)
				}
				if !strings.Contains(msg, tt.wantMsg) {
					t.Errorf("error %q does not say %q", msg, tt.wantMsg)
				}
				if strings.Contains(msg, FormatCode(code)) || strings.Contains(msg, hex.EncodeToString(code)) || strings.Contains(msg, string(code)) {
					t.Errorf("error %q contains the code", msg)
				}
			})
		}
	}
}

func TestSealRejects(t *testing.T) {
	x := mustKey(t, SuiteX25519ChaCha)
	h := mustKey(t, SuiteMLKEM768X25519)
	code := []byte("0123456789abcdef0123456789abcdef")
	tests := []struct {
		name    string
		suite   Suite
		pub     []byte
		binding Binding
		code    []byte
		wantErr error
	}{
		{"unknown suite", "x25519", x.PublicKey(), testBinding, code, ErrUnknownSuite},
		{"empty suite", "", x.PublicKey(), testBinding, code, ErrUnknownSuite},
		{"hybrid key for preset", SuiteX25519ChaCha, h.PublicKey(), testBinding, code, ErrMalformed},
		{"preset key for hybrid", SuiteMLKEM768X25519, x.PublicKey(), testBinding, code, ErrMalformed},
		{"short key", SuiteX25519ChaCha, x.PublicKey()[:31], testBinding, code, ErrMalformed},
		{"nil key", SuiteX25519ChaCha, nil, testBinding, code, ErrMalformed},
		{"empty code", SuiteX25519ChaCha, x.PublicKey(), testBinding, nil, ErrMalformed},
		{"code too long", SuiteX25519ChaCha, x.PublicKey(), testBinding, make([]byte, MaxCodeLen+1), ErrMalformed},
		{"empty host", SuiteX25519ChaCha, x.PublicKey(), Binding{SessionID: "s", GuestID: "g"}, code, ErrMalformed},
		{"session too long", SuiteMLKEM768X25519, h.PublicKey(), Binding{SessionID: strings.Repeat("s", 257), HostID: "h", GuestID: "g"}, code, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Seal(tt.suite, tt.pub, tt.binding, tt.code)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Seal = %+v, %v; want error %v", got, err, tt.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "seal: seal access code: ") {
				t.Errorf("error %q lacks the prefix", err)
			}
			if strings.Contains(err.Error(), string(code)) {
				t.Errorf("error %q contains the code", err)
			}
		})
	}
}

func TestBindingInfo(t *testing.T) {
	tests := []struct {
		name string
		b    Binding
		want string
	}{
		{
			name: "short fields",
			b:    Binding{SessionID: "s", HostID: "hh", GuestID: "ggg"},
			want: "0011" + hex.EncodeToString([]byte(bindingLabel)) + "000173" + "00026868" + "0003676767",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.b.info()
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tt.want {
				t.Errorf("info() = %x, want %s", got, tt.want)
			}
		})
	}
}

func TestParsePrivateKeyRejects(t *testing.T) {
	tests := []struct {
		name    string
		suite   Suite
		b       []byte
		wantErr error
	}{
		{"unknown suite", "nope", make([]byte, 32), ErrUnknownSuite},
		{"preset short", SuiteX25519ChaCha, make([]byte, 31), ErrMalformed},
		{"hybrid long", SuiteMLKEM768X25519, make([]byte, 33), ErrMalformed},
		{"hybrid empty", SuiteMLKEM768X25519, nil, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParsePrivateKey(tt.suite, tt.b)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParsePrivateKey = %v, %v; want %v", k, err, tt.wantErr)
			}
		})
	}
	if _, err := GenerateKey("nope"); !errors.Is(err, ErrUnknownSuite) {
		t.Errorf("GenerateKey(unknown) error %v, want %v", err, ErrUnknownSuite)
	}
}

func TestAccessCode(t *testing.T) {
	a, err := NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewAccessCode()
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != AccessCodeSize || bytes.Equal(a, b) {
		t.Fatalf("NewAccessCode gave %d bytes, or the same code twice", len(a))
	}
	text := FormatCode(a)
	if len(text) != 52 || text != strings.ToLower(text) || strings.Contains(text, "=") {
		t.Errorf("FormatCode = %d chars, want 52 lower-case chars without padding", len(text))
	}

	fixed := bytes.Repeat([]byte{0xff}, AccessCodeSize)
	const fixedText = "777777777777777777777777777777777777777777777777777q"
	tests := []struct {
		name    string
		in      string
		want    []byte
		wantErr bool
	}{
		{name: "random", in: text, want: a},
		{name: "golden", in: fixedText, want: fixed},
		{name: "zero", in: strings.Repeat("a", 52), want: make([]byte, AccessCodeSize)},
		{name: "upper case", in: strings.ToUpper(text), want: a},
		{name: "surrounding space", in: " " + text + "\n", want: a},
		{name: "empty", in: "", wantErr: true},
		{name: "one short", in: text[:51], wantErr: true},
		{name: "one long", in: text + "a", wantErr: true},
		{name: "padded", in: text + "====", wantErr: true},
		{name: "digit 1", in: "1" + text[1:], wantErr: true},
		{name: "non-zero padding bits", in: fixedText[:51] + "7", wantErr: true},
		{name: "dash", in: text[:26] + "-" + text[27:], wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCode(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrMalformed) {
					t.Fatalf("ParseCode = %x, %v; want %v", got, err, ErrMalformed)
				}
				if in := strings.TrimSpace(tt.in); len(in) >= 8 && strings.Contains(err.Error(), in[:8]) {
					t.Errorf("error %q echoes the code", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCode: %v", err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("ParseCode = %x, want %x", got, tt.want)
			}
		})
	}
	if got := FormatCode(fixed); got != fixedText {
		t.Errorf("FormatCode(ff...) = %q, want %q", got, fixedText)
	}
}

// mutate returns orig when x is empty; otherwise a value of len(x) bytes
// whose bytes are orig XOR x where orig has bytes, and x beyond.
func mutate(orig, x []byte) []byte {
	if len(x) == 0 {
		return orig
	}
	out := bytes.Clone(x)
	for i := range min(len(orig), len(x)) {
		out[i] ^= orig[i]
	}
	return out
}

func FuzzOpen(f *testing.F) {
	type fixture struct {
		priv   *PrivateKey
		sealed Sealed
	}
	code := []byte("fuzz access code")
	var fixtures []fixture
	for _, s := range []Suite{SuiteX25519ChaCha, SuiteMLKEM768X25519} {
		priv := mustKey(f, s)
		sealed, err := Seal(s, priv.PublicKey(), testBinding, code)
		if err != nil {
			f.Fatal(err)
		}
		fixtures = append(fixtures, fixture{priv, sealed})
	}
	f.Add(false, []byte(nil), []byte(nil))
	f.Add(true, []byte(nil), []byte(nil))
	f.Add(false, []byte{1}, []byte(nil))
	f.Add(false, []byte(nil), make([]byte, len(code)+tagSize-1))
	f.Add(false, make([]byte, 32), append(make([]byte, len(code)+tagSize-1), 0x80))
	f.Add(true, make([]byte, 1120), []byte{0})
	f.Fuzz(func(t *testing.T, hybrid bool, encX, ctX []byte) {
		fx := fixtures[0]
		if hybrid {
			fx = fixtures[1]
		}
		enc := mutate(fx.sealed.Enc, encX)
		ct := mutate(fx.sealed.Ciphertext, ctX)
		got, err := Open(fx.priv, testBinding, Sealed{Suite: fx.sealed.Suite, Enc: enc, Ciphertext: ct})
		unchanged := bytes.Equal(enc, fx.sealed.Enc) && bytes.Equal(ct, fx.sealed.Ciphertext)
		switch {
		case unchanged && err != nil:
			t.Fatalf("Open of the valid seal failed: %v", err)
		case unchanged && !bytes.Equal(got, code):
			t.Fatalf("Open of the valid seal returned another code")
		case !unchanged && err == nil:
			t.Fatalf("Open accepted a mutated seal (enc %x, ct %x)", enc, ct)
		}
	})
}
