package receipt

import (
	"bytes"
	"sync"
)

// VouchedReceipts is how many receipts a Verifier remembers as signed by
// its own process (Vouch): about two seconds of payments at 2,000 a
// second, 1.5 MiB at most.
const VouchedReceipts = 4096

// vouched is a Verifier's bounded memory of receipts its own process
// signed: their exact bytes, each taken once. A receipt whose key, payload
// and signature equal one remembered needs no signature check, since its
// signer made that signature with a key the Verifier trusts. Anything else
// (another process's receipt, one remembered no longer, or any byte
// changed) is checked in full.
type vouched struct {
	mu   sync.Mutex
	m    map[string]vouch // by signature
	ring []string         // signatures in the order vouched, for the bound
	next int
}

type vouch struct {
	keyID   string
	payload []byte
}

func newVouched(n int) *vouched {
	return &vouched{m: make(map[string]vouch, n), ring: make([]string, n)}
}

func (v *vouched) add(r Receipt) {
	sig := string(r.Signature)
	v.mu.Lock()
	defer v.mu.Unlock()
	if old := v.ring[v.next]; old != "" {
		delete(v.m, old)
	}
	v.ring[v.next] = sig
	v.next = (v.next + 1) % len(v.ring)
	v.m[sig] = vouch{keyID: r.KeyID, payload: bytes.Clone(r.Payload)}
}

// take reports whether r is a receipt vouched for, byte for byte, and
// forgets it: a receipt presented again is checked in full.
func (v *vouched) take(r Receipt) bool {
	if v == nil {
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	w, ok := v.m[string(r.Signature)]
	if !ok || w.keyID != r.KeyID || !bytes.Equal(w.payload, r.Payload) {
		return false
	}
	delete(v.m, string(r.Signature))
	return true
}

// Vouch tells v that r was just signed in this process, by a [Signer] whose
// key v trusts: the next [Verifier.Verify] of exactly these bytes skips
// the signature's arithmetic (about 50 µs), and checks the rest as ever. A
// receipt under a key v does not trust is not remembered. Only a process's
// own signer may vouch: a receipt heard from elsewhere must be verified.
func (v *Verifier) Vouch(r Receipt) {
	if v == nil || v.vouched == nil || v.keys[r.KeyID] == nil || len(r.Signature) == 0 {
		return
	}
	v.vouched.add(r)
}
