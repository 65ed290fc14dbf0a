// Package account reads the device rows that tie a device to the account
// that owns it (and its wallet). Package auth enrols devices; the flow's
// packages only ask which account a device belongs to, and lock a device's
// row to serialise that device's concurrent writes.
package account

import (
	"errors"
	"fmt"

	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/store"
)

// Of returns the account that owns deviceID.
func Of(tx *store.Tx, deviceID string) (string, error) {
	var id string
	err := tx.QueryRow(`SELECT account_id FROM devices WHERE id = ?`, deviceID).Scan(&id)
	if errors.Is(err, store.ErrNotFound) {
		return "", problem.NotFoundf("device %s not found", deviceID)
	}
	if err != nil {
		return "", fmt.Errorf("account: account of device %s: %w", deviceID, err)
	}
	return id, nil
}

// LockDevice locks a device's row until the write ends, so that two
// concurrent writes for the same device see each other's effects
// (PostgreSQL; on SQLite the single writer already runs each write alone).
func LockDevice(tx *store.Tx, deviceID string) error {
	if tx.ForUpdate() == "" {
		return nil
	}
	var one int
	if err := tx.QueryRow(`SELECT 1 FROM devices WHERE id = ?`+tx.ForUpdate(), deviceID).Scan(&one); err != nil {
		return fmt.Errorf("account: lock device %s: %w", deviceID, err)
	}
	return nil
}

// PublicKey returns a device's Ed25519 public key.
func PublicKey(tx *store.Tx, deviceID string) ([]byte, error) {
	var pub []byte
	err := tx.QueryRow(`SELECT public_key FROM devices WHERE id = ?`, deviceID).Scan(&pub)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFoundf("device %s not found", deviceID)
	}
	if err != nil {
		return nil, fmt.Errorf("account: public key of device %s: %w", deviceID, err)
	}
	return pub, nil
}
