// Package payment is the built-in payment platform: a wallet on the ledger.
// Paying a quote moves the fee from the guest's wallet into the session's
// escrow and returns a payment-success response signed by the platform's
// Ed25519 key, which the server and the host verify.
package payment

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/money"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/receipt"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// PlatformName is written into the receipts this platform signs.
const PlatformName = "wallet"

// Wallet is the built-in payment platform.
type Wallet struct {
	signer   *receipt.Signer
	verifier *receipt.Verifier
	keys     []ed25519.PublicKey
}

var _ session.Platform = (*Wallet)(nil)

// platformKeysLock is the store lock key (Tx.LockKey) under which the
// platform's first key is created.
const platformKeysLock = 0x506c6174666f726d // "Platform"

// Open loads the platform's signing keys from the store, creating the first
// one on a new database. The newest key signs; all verify. The keys are
// kept in the database sealed with kek (AES-256-GCM; 32 bytes, from a file
// outside the database, see server.Config.KeyFile), so a copy of the
// database alone cannot make receipts. Keys an older version stored in the
// clear are sealed when first opened.
func Open(ctx context.Context, st *store.Store, now func() time.Time, kek []byte) (*Wallet, error) {
	aead, err := keyAEAD(kek)
	if err != nil {
		return nil, err
	}
	var privs []ed25519.PrivateKey
	err = st.Write(ctx, func(tx *store.Tx) error {
		privs = privs[:0]
		// Replicas starting together on a new database must agree on
		// one first key: the first to take the lock creates it, the
		// others wait and then read it.
		if err := tx.LockKey(platformKeysLock); err != nil {
			return err
		}
		rows, err := tx.Query(`SELECT id, private_key FROM platform_keys ORDER BY created_ms, id`)
		if err != nil {
			return err
		}
		var clear []string // keys stored in the clear by an older version
		for rows.Next() {
			var id string
			var stored []byte
			if err := rows.Scan(&id, &stored); err != nil {
				rows.Close()
				return err
			}
			seed, err := openSeed(aead, id, stored)
			if err != nil {
				rows.Close()
				return err
			}
			if len(stored) == ed25519.SeedSize {
				clear = append(clear, id)
			}
			privs = append(privs, ed25519.NewKeyFromSeed(seed))
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, id := range clear {
			for _, p := range privs {
				if receipt.KeyIDOf(p.Public().(ed25519.PublicKey)) == id {
					if _, err := tx.Exec(`UPDATE platform_keys SET private_key = ? WHERE id = ?`, sealSeed(aead, id, p.Seed()), id); err != nil {
						return err
					}
				}
			}
		}
		if len(privs) > 0 {
			return nil
		}
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		pub := priv.Public().(ed25519.PublicKey)
		id := receipt.KeyIDOf(pub)
		if _, err := tx.Exec(`INSERT INTO platform_keys (id, private_key, created_ms) VALUES (?, ?, ?)`,
			id, sealSeed(aead, id, priv.Seed()), now().UnixMilli()); err != nil {
			return err
		}
		privs = append(privs, priv)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("payment: load platform keys: %w", err)
	}
	w := &Wallet{signer: receipt.NewSigner(privs[len(privs)-1])}
	for _, p := range privs {
		w.keys = append(w.keys, p.Public().(ed25519.PublicKey))
	}
	w.verifier = receipt.NewVerifier(w.keys...)
	return w, nil
}

// sealedKeyVersion starts a sealed key: version, nonce, sealed seed.
const sealedKeyVersion = 1

func keyAEAD(kek []byte) (cipher.AEAD, error) {
	if len(kek) != 32 {
		return nil, fmt.Errorf("payment: the key-encryption key must be 32 bytes, got %d", len(kek))
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealSeed seals a signing key's seed, bound to its key ID.
func sealSeed(aead cipher.AEAD, id string, seed []byte) []byte {
	out := make([]byte, 1+aead.NonceSize(), 1+aead.NonceSize()+len(seed)+aead.Overhead())
	out[0] = sealedKeyVersion
	rand.Read(out[1:])
	return aead.Seal(out, out[1:], seed, []byte(id))
}

// openSeed opens a stored key: sealed, or (from an older version) a bare
// seed.
func OpenSeed(kek []byte, id string, stored []byte) ([]byte, error) {
	aead, err := keyAEAD(kek)
	if err != nil {
		return nil, err
	}
	return openSeed(aead, id, stored)
}

func openSeed(aead cipher.AEAD, id string, stored []byte) ([]byte, error) {
	if len(stored) == ed25519.SeedSize {
		return stored, nil
	}
	ns := aead.NonceSize()
	if len(stored) < 1+ns+aead.Overhead() || stored[0] != sealedKeyVersion {
		return nil, fmt.Errorf("platform key %s is stored in an unknown form (%d bytes)", id, len(stored))
	}
	seed, err := aead.Open(nil, stored[1:1+ns], stored[1+ns:], []byte(id))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("platform key %s cannot be opened with this key-encryption key: give the server the key file it was created with (--key-file)", id)
	}
	return seed, nil
}

// PublicKeys returns the keys that verify this platform's receipts.
func (w *Wallet) PublicKeys() []ed25519.PublicKey { return w.keys }

// Sign makes the payment-success response for a charge: a new receipt ID
// and the platform's signature over the canonical payload.
func (w *Wallet) Sign(nowMS int64, c session.Charge) (string, *sharespotv1.Receipt, error) {
	p := receipt.Payload{
		ReceiptID: protocol.NewID("rcpt"), SessionID: c.SessionID, QuoteID: c.QuoteID, Currency: c.Currency,
		Payer: c.Payer.DeviceID, Payee: c.Payee.DeviceID, Platform: platformOf(c), Amount: c.Amount, Bytes: c.Bytes,
		IssuedAt: time.UnixMilli(nowMS),
	}
	r, err := w.signer.Sign(p)
	if err != nil {
		return "", nil, fmt.Errorf("payment: sign receipt: %w", err)
	}
	// The guest sends this receipt back to confirm, often a moment later:
	// its signature, made here, need not be checked again then.
	w.verifier.Vouch(r)
	return p.ReceiptID, &sharespotv1.Receipt{KeyId: r.KeyID, Payload: r.Payload, Signature: r.Signature}, nil
}

// platformOf names the platform in a receipt: the wallet, or Stripe for a
// card (the same keys sign both).
func platformOf(c session.Charge) string {
	if c.Method == session.MethodCard {
		return "stripe"
	}
	return PlatformName
}

// Charge takes a quote's fee from the payer's wallet into escrow and
// records its signed receipt. It is C3.2 / C1.13 on the platform's side.
// A card payment (Method card, made by internal/card once Stripe reports
// the amount authorised) moves the fee from the payer's card account
// instead: the money is held on the card, not yet captured.
func (w *Wallet) Charge(tx *store.Tx, nowMS int64, c session.Charge, receiptID string, r *sharespotv1.Receipt) error {
	if c.Amount > 0 {
		from, memo := ledger.Wallet(c.Payer.AccountID, c.Currency), "pay quote "+c.QuoteID
		if c.Method == session.MethodCard {
			from, memo = ledger.Card(c.Payer.AccountID, c.Currency), "pay quote "+c.QuoteID+" by card (authorised, not yet captured)"
		}
		_, err := ledger.Apply(tx, nowMS, ledger.Transfer{ID: "pay:" + c.QuoteID, Debit: from,
			Credit: ledger.Escrow(c.SessionID, c.Currency), Amount: c.Amount, Currency: c.Currency, Memo: memo})
		if errors.Is(err, ledger.ErrInsufficientFunds) {
			have, _ := ledger.Balance(tx, from.ID)
			return problem.Exhaustedf("insufficient funds: your wallet holds %s, the fee is %s; fund the wallet first", money.Format(have, c.Currency), money.Format(c.Amount, c.Currency))
		}
		if err != nil {
			return fmt.Errorf("payment: charge quote %s: %w", c.QuoteID, err)
		}
	}
	// Expected to be new: on PostgreSQL the write does not wait for it
	// (store.Tx.ExpectN), and runs again when it was not.
	if _, err := tx.ExpectN(1, `INSERT INTO receipts (id, quote_id, key_id, payload, signature, confirmed, created_ms) VALUES (?, ?, ?, ?, ?, 0, ?)`,
		receiptID, c.QuoteID, r.KeyId, r.Payload, r.Signature, nowMS); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return problem.AlreadyExistsf("quote %s is already paid", c.QuoteID)
		}
		return fmt.Errorf("payment: record receipt: %w", err)
	}
	tx.Remember(receiptKey(c.QuoteID), &storedReceipt{keyID: r.KeyId, payload: bytes.Clone(r.Payload), signature: bytes.Clone(r.Signature)})
	return nil
}

// Redeem marks a quote's receipt as used by its confirmation: false if it
// is unknown or was used before.
func (w *Wallet) Redeem(tx *store.Tx, receiptID, quoteID string) (bool, error) {
	// Expected to be unused: on PostgreSQL the write does not wait for it
	// (store.Tx.ExpectN), and runs again when it was used before.
	n, err := tx.ExpectN(1, `UPDATE receipts SET confirmed = 1 WHERE id = ? AND quote_id = ? AND confirmed = 0`, receiptID, quoteID)
	if err != nil {
		return false, fmt.Errorf("payment: redeem receipt %s: %w", receiptID, err)
	}
	return n == 1, nil
}

// Stored returns the receipt recorded for a quote, nil if none: the
// writer's memory's (store.Memo), or the database's.
func (w *Wallet) Stored(tx *store.Tx, quoteID string) (*sharespotv1.Receipt, error) {
	st, err := store.Memo(tx, receiptKey(quoteID), func() (*storedReceipt, error) {
		st := new(storedReceipt)
		err := tx.QueryRow(`SELECT key_id, payload, signature FROM receipts WHERE quote_id = ?`, quoteID).Scan(&st.keyID, &st.payload, &st.signature)
		if errors.Is(err, store.ErrNotFound) {
			return nil, nil
		}
		return st, err
	}, sameReceipt)
	if err != nil {
		return nil, fmt.Errorf("payment: receipt of quote %s: %w", quoteID, err)
	}
	if st == nil {
		return nil, nil
	}
	return &sharespotv1.Receipt{KeyId: st.keyID, Payload: st.payload, Signature: st.signature}, nil
}

// ReadingReceipts reads the receipts of a session's quotes, each quote's
// or its lack of one, into this write's memory for Stored.
func (w *Wallet) ReadingReceipts(tx *store.Tx, sessionID string) store.Reading {
	return store.Reading{Query: `SELECT q.id, r.quote_id, r.key_id, r.payload, r.signature FROM quotes q
		LEFT JOIN receipts r ON r.quote_id = q.id WHERE q.session_id = ?`, Args: []any{sessionID}, Row: func(sc store.Scanner) error {
		var quoteID string
		var paid, keyID []byte
		st := new(storedReceipt)
		if err := sc.Scan(&quoteID, &paid, &keyID, &st.payload, &st.signature); err != nil {
			return fmt.Errorf("payment: receipts of session %s: %w", sessionID, err)
		}
		if paid == nil {
			st = nil // no receipt yet
		} else {
			st.keyID = string(keyID)
		}
		tx.Remember(receiptKey(quoteID), st)
		return nil
	}}
}

// storedReceipt is what Stored reads of a receipts row, as the writer's
// memory keeps it (nil: the quote has none yet). This package is the one
// writer of receipts: Charge keeps what it inserts; Redeem's change
// (confirmed) is not kept.
type storedReceipt struct {
	keyID              string
	payload, signature []byte
}

func receiptKey(quoteID string) string { return "receipt/" + quoteID }

func sameReceipt(kept, stored *storedReceipt) bool {
	if kept == nil || stored == nil {
		return kept == stored
	}
	return kept.keyID == stored.keyID && bytes.Equal(kept.payload, stored.payload) && bytes.Equal(kept.signature, stored.signature)
}

// Verify checks a payment-success response's signature and decodes it.
func (w *Wallet) Verify(r *sharespotv1.Receipt) (receipt.Payload, error) {
	return w.verifier.Verify(receipt.Receipt{KeyID: r.GetKeyId(), Payload: r.GetPayload(), Signature: r.GetSignature()})
}

// Fund moves outside money into an account's wallet (an operator action,
// until card payments arrive). key makes it idempotent.
func Fund(tx *store.Tx, nowMS int64, accountID, currency string, amount int64, key, memo string) (applied bool, err error) {
	if !ledger.ValidCurrency(currency) {
		return false, problem.Invalidf("currency %q is not an ISO 4217 code such as EUR", currency)
	}
	if amount <= 0 {
		return false, problem.Invalidf("amount must be positive, got %d", amount)
	}
	var n int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM accounts WHERE id = ?`, accountID).Scan(&n); err != nil {
		return false, fmt.Errorf("payment: find account: %w", err)
	}
	if n == 0 {
		return false, problem.NotFoundf("account %s not found", accountID)
	}
	if key == "" {
		key = protocol.NewID("fund")
	}
	return ledger.Apply(tx, nowMS, ledger.Transfer{ID: "fund:" + key, Debit: ledger.Funding(currency),
		Credit: ledger.Wallet(accountID, currency), Amount: amount, Currency: currency, Memo: memo})
}

// Defund moves what accountID's wallet holds in currency back to the
// outside money (the reverse of Fund: what the bench does to leave its
// wallets empty), once per key, and returns the amount moved. Money held
// in escrow for an open session stays there.
func Defund(tx *store.Tx, nowMS int64, accountID, currency, key, memo string) (int64, error) {
	if !ledger.ValidCurrency(currency) {
		return 0, problem.Invalidf("currency %q is not an ISO 4217 code such as EUR", currency)
	}
	w := ledger.Wallet(accountID, currency)
	bal, err := ledger.Balance(tx, w.ID)
	if err != nil || bal <= 0 {
		return 0, err
	}
	applied, err := ledger.Apply(tx, nowMS, ledger.Transfer{ID: "defund:" + key, Debit: w,
		Credit: ledger.Funding(currency), Amount: bal, Currency: currency, Memo: memo})
	if err != nil || !applied {
		return 0, err
	}
	return bal, nil
}
