package dashboard

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/sharespot/sharespot/internal/atomicfile"
	"github.com/sharespot/sharespot/internal/session"
	"github.com/sharespot/sharespot/internal/store"
)

// Role is who a dashboard session belongs to.
type Role string

// Roles.
const (
	RoleHost     Role = "host"
	RoleOperator Role = "operator"
)

// Lifetimes of a sign-in link and of the browser session it opens.
const (
	LinkTTL    = 10 * time.Minute
	SessionTTL = 12 * time.Hour
)

// KeySize is the admin key's length in bytes.
const KeySize = 32

// linkPrefix marks sign-in link tokens, sessionPrefix session cookies.
const (
	linkPrefix    = "ssl_"
	sessionPrefix = "sss_"
)

// SignInPath is the path of a link token's sign-in page.
func SignInPath(token string) string { return "/dashboard/signin/" + token }

// KeyPath is the admin key's file in a data directory.
func KeyPath(dataDir string) string { return filepath.Join(dataDir, "admin.key") }

// LoadOrCreateKey reads the admin key, creating it (0600) on first use.
func LoadOrCreateKey(path string) ([]byte, error) {
	k, err := atomicfile.LoadOrCreateSecret(path, KeySize)
	if err != nil {
		return nil, fmt.Errorf("dashboard: admin key: %w", err)
	}
	return k, nil
}

// hash is what the database keeps of a token: HMAC-SHA256 under the admin
// key, so that a link or a session works only where the key is.
func hash(key []byte, token string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("sharespot/dashboard/v1\x00"))
	m.Write([]byte(token))
	return m.Sum(nil)
}

func newToken(prefix string) string {
	b := make([]byte, 32)
	rand.Read(b)
	return prefix + base64.RawURLEncoding.EncodeToString(b)
}

// wellFormed reports whether s could be a token with the prefix.
func wellFormed(s, prefix string) bool {
	if !strings.HasPrefix(s, prefix) || len(s) != len(prefix)+43 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(s[len(prefix):])
	return err == nil
}

const keyCheckID = "admin"

func keyCheck(key []byte) []byte { return hash(key, "key-check") }

// RecordKey stores the admin key's check value if the database has none
// and reports whether key is the one recorded.
func RecordKey(tx *store.Tx, key []byte, nowMS int64) (bool, error) {
	var have []byte
	err := tx.QueryRow(`SELECT check_value FROM dashboard_keys WHERE id = ?`, keyCheckID).Scan(&have)
	if errors.Is(err, store.ErrNotFound) {
		_, err = tx.Exec(`INSERT INTO dashboard_keys (id, check_value, created_ms) VALUES (?, ?, ?)`, keyCheckID, keyCheck(key), nowMS)
		return err == nil, err
	}
	if err != nil {
		return false, fmt.Errorf("dashboard: read the admin key's check value: %w", err)
	}
	return bytes.Equal(have, keyCheck(key)), nil
}

// KeyRecorded reports whether the database has the admin key's check
// value, and whether key is the one recorded.
func KeyRecorded(tx *store.Tx, key []byte) (recorded, same bool, err error) {
	var have []byte
	err = tx.QueryRow(`SELECT check_value FROM dashboard_keys WHERE id = ?`, keyCheckID).Scan(&have)
	if errors.Is(err, store.ErrNotFound) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("dashboard: read the admin key's check value: %w", err)
	}
	return true, bytes.Equal(have, keyCheck(key)), nil
}

// CheckKey refuses a key that is not the one the database's servers use.
func CheckKey(tx *store.Tx, key []byte) error {
	var have []byte
	err := tx.QueryRow(`SELECT check_value FROM dashboard_keys WHERE id = ?`, keyCheckID).Scan(&have)
	if errors.Is(err, store.ErrNotFound) {
		return errors.New("no server has started on this database yet: start `sharespot server` once, then ask for the link again")
	}
	if err != nil {
		return fmt.Errorf("dashboard: read the admin key's check value: %w", err)
	}
	if !bytes.Equal(have, keyCheck(key)) {
		return errors.New("this admin key is not the one the servers of this database use: give the server's --data directory (or its --admin-key-file)")
	}
	return nil
}

// CreateLink stores a new single-use sign-in link for role (and, for a
// host, its account) that expires LinkTTL after now, and returns its token.
func CreateLink(tx *store.Tx, key []byte, role Role, accountID string, now time.Time) (token string, expires time.Time, err error) {
	if role != RoleHost && role != RoleOperator {
		return "", time.Time{}, fmt.Errorf("dashboard: unknown role %q", role)
	}
	if (role == RoleHost) != (accountID != "") {
		return "", time.Time{}, errors.New("dashboard: a host link names its account, an operator link none")
	}
	token = newToken(linkPrefix)
	expires = now.Add(LinkTTL)
	if _, err := tx.Exec(`INSERT INTO dashboard_links (hash, role, account_id, expires_ms, created_ms) VALUES (?, ?, ?, ?, ?)`,
		hash(key, token), string(role), accountID, expires.UnixMilli(), now.UnixMilli()); err != nil {
		return "", time.Time{}, fmt.Errorf("dashboard: store sign-in link: %w", err)
	}
	return token, expires, nil
}

// viewer is a signed-in dashboard session.
type viewer struct {
	Role      Role
	AccountID string
	csrf      string
	cookie    string
}

// errLink is why a link does not sign in.
var errLink = errors.New("this sign-in link is unknown, already used or expired: ask for a new one")

// peekLink reads a link without using it.
func peekLink(tx *store.Tx, key []byte, token string, nowMS int64) (Role, error) {
	if !wellFormed(token, linkPrefix) {
		return "", errLink
	}
	var role string
	var exp int64
	err := tx.QueryRow(`SELECT role, expires_ms FROM dashboard_links WHERE hash = ?`, hash(key, token)).Scan(&role, &exp)
	if errors.Is(err, store.ErrNotFound) || (err == nil && exp <= nowMS) {
		return "", errLink
	}
	if err != nil {
		return "", err
	}
	return Role(role), nil
}

// useLink deletes the unexpired link and opens a session in its place;
// of two concurrent uses one finds nothing to delete.
func useLink(tx *store.Tx, key []byte, token string, now time.Time) (viewer, error) {
	if !wellFormed(token, linkPrefix) {
		return viewer{}, errLink
	}
	h := hash(key, token)
	var v viewer
	var role string
	var exp int64
	err := tx.QueryRow(`SELECT role, account_id, expires_ms FROM dashboard_links WHERE hash = ?`+tx.ForUpdate(), h).Scan(&role, &v.AccountID, &exp)
	if errors.Is(err, store.ErrNotFound) || (err == nil && exp <= now.UnixMilli()) {
		return viewer{}, errLink
	}
	if err != nil {
		return viewer{}, err
	}
	n, err := tx.ExecN(`DELETE FROM dashboard_links WHERE hash = ? AND expires_ms > ?`, h, now.UnixMilli())
	if err != nil {
		return viewer{}, err
	}
	if n != 1 {
		return viewer{}, errLink
	}
	v.Role = Role(role)
	v.cookie = newToken(sessionPrefix)
	if _, err := tx.Exec(`INSERT INTO dashboard_sessions (hash, role, account_id, expires_ms, created_ms) VALUES (?, ?, ?, ?, ?)`,
		hash(key, v.cookie), role, v.AccountID, now.Add(SessionTTL).UnixMilli(), now.UnixMilli()); err != nil {
		return viewer{}, err
	}
	return v, nil
}

// lookupSession returns the session a cookie belongs to.
func lookupSession(tx *store.Tx, key []byte, cookie string, nowMS int64) (viewer, bool, error) {
	if !wellFormed(cookie, sessionPrefix) {
		return viewer{}, false, nil
	}
	var v viewer
	var role string
	var exp int64
	err := tx.QueryRow(`SELECT role, account_id, expires_ms FROM dashboard_sessions WHERE hash = ?`, hash(key, cookie)).Scan(&role, &v.AccountID, &exp)
	if errors.Is(err, store.ErrNotFound) || (err == nil && exp <= nowMS) {
		return viewer{}, false, nil
	}
	if err != nil {
		return viewer{}, false, err
	}
	v.Role, v.cookie = Role(role), cookie
	v.csrf = base64.RawURLEncoding.EncodeToString(hash(key, "csrf\x00"+cookie))
	return v, true, nil
}

// SampleKeep is how long a live session's usage samples are kept: the
// chart draws at most its last maxSamples, the rate its last two.
const SampleKeep = time.Hour

// Sweep deletes expired links and sessions, and the usage samples no page
// will draw: a live session's older than SampleKeep, and every sample of a
// session that has ended (or is not known). Samples are a view only; no
// money is worked out from them.
func Sweep(tx *store.Tx, nowMS int64) error {
	if _, err := tx.Exec(`DELETE FROM dashboard_links WHERE expires_ms <= ?`, nowMS); err != nil {
		return err
	}
	if _, err := tx.Exec(`DELETE FROM dashboard_sessions WHERE expires_ms <= ?`, nowMS); err != nil {
		return err
	}
	return session.PruneUsageSamples(tx, nowMS-SampleKeep.Milliseconds())
}

// OperatorLink makes an operator's sign-in link in st, after checking that
// key is the admin key the database's servers use (`sharespot server
// admin-link`).
func OperatorLink(ctx context.Context, st *store.Store, key []byte, now time.Time) (token string, expires time.Time, err error) {
	err = st.Write(ctx, func(tx *store.Tx) error {
		if err := CheckKey(tx, key); err != nil {
			return err
		}
		var err error
		token, expires, err = CreateLink(tx, key, RoleOperator, "", now)
		return err
	})
	return token, expires, err
}
