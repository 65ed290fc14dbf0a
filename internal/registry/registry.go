// Package registry keeps the network-sharing instructions hosts register
// (access point, tariff, shareable volume) and matches a guest's scan
// against them (C1.2–C1.3).
package registry

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	sharespotv1 "github.com/sharespot/sharespot/gen/sharespot/v1"
	"github.com/sharespot/sharespot/internal/account"
	"github.com/sharespot/sharespot/internal/ledger"
	"github.com/sharespot/sharespot/internal/problem"
	"github.com/sharespot/sharespot/internal/protocol"
	"github.com/sharespot/sharespot/internal/size"
	"github.com/sharespot/sharespot/internal/store"
)

// Limits on what a host may register and a guest may send.
const (
	MaxCandidates   = protocol.MaxCandidates
	MaxShareable    = int64(1) << 50 // 1 PiB
	MaxPriceMinor   = int64(1) << 40
	MaxHotspotsHost = 64
)

// Hotspot is a registered instruction with its state.
type Hotspot struct {
	ID, HostDeviceID     string
	SSID                 []byte
	BSSID                string
	Security             sharespotv1.Security
	Tariff               Tariff
	ShareableBytes       int64
	WarnAtBytes          int64
	CommittedBytes       int64
	Active               bool
	CreatedMS, UpdatedMS int64
	// SeenMS is when the host last showed it was there; Online is false
	// once its agent's stream closed (Present).
	SeenMS int64
	Online bool
}

// Present reports whether the hotspot's host is there at nowMS: its agent
// was seen within away and its stream did not close since. away 0 does not
// ask (every active hotspot counts as present).
func (h *Hotspot) Present(nowMS int64, away time.Duration) bool {
	return away <= 0 || h.Online && h.SeenMS >= nowMS-away.Milliseconds()
}

// Tariff is a hotspot's price list.
type Tariff struct {
	Currency        string
	PriceMinor      int64
	UnitBytes       int64
	MinPurchase     int64
	TopUpPriceMinor int64
}

// Reserve commits bytes of a hotspot's volume to a paid purchase; it
// refuses (resource exhausted) when the hotspot has less than that left.
func Reserve(tx *store.Tx, hotspotID string, bytes int64) error {
	// Expected to succeed: on PostgreSQL the write does not wait for it
	// (store.Tx.ExpectN), and runs again when it did not.
	n, err := tx.ExpectN(1, `UPDATE hotspots SET committed_bytes = committed_bytes + ? WHERE id = ? AND committed_bytes + ? <= shareable_bytes`,
		bytes, hotspotID, bytes)
	if err != nil {
		return fmt.Errorf("registry: reserve %d bytes of %s: %w", bytes, hotspotID, err)
	}
	if n != 1 {
		h, err := Get(tx, hotspotID)
		if err != nil {
			return err
		}
		left, more := size.FormatPair(h.Available(), bytes)
		return problem.Exhaustedf("the hotspot has %s left to share; cannot sell %s more", left, more)
	}
	return nil
}

// Release gives back bytes reserved by Reserve and not used.
func Release(tx *store.Tx, hotspotID string, bytes int64) error {
	if bytes <= 0 {
		return nil
	}
	return tx.ExecLater(fmt.Sprintf("registry: release %d bytes of %s", bytes, hotspotID), `UPDATE hotspots SET committed_bytes = committed_bytes - ? WHERE id = ?`, bytes, hotspotID)
}

// Equal reports whether t is the tariff p describes.
func (t Tariff) Equal(p *sharespotv1.Tariff) bool {
	return p != nil && t.Currency == p.Currency && t.PriceMinor == p.PriceMinor && t.UnitBytes == p.UnitBytes &&
		t.MinPurchase == p.MinPurchaseBytes && t.TopUpPriceMinor == p.TopupPriceMinor
}

// Available is the volume still to be sold.
func (h *Hotspot) Available() int64 { return max(0, h.ShareableBytes-h.CommittedBytes) }

// Proto renders h for the API; online says whether its host is there
// (Present).
func (h *Hotspot) Proto(online bool) *sharespotv1.Hotspot {
	return &sharespotv1.Hotspot{
		Id:           h.ID,
		HostDeviceId: h.HostDeviceID,
		Instruction: &sharespotv1.ShareInstruction{
			AccessPoint:    &sharespotv1.AccessPoint{Ssid: h.SSID, Bssid: h.BSSID, Security: h.Security},
			Tariff:         h.Tariff.Proto(),
			ShareableBytes: h.ShareableBytes,
			WarnAtBytes:    h.WarnAtBytes,
		},
		CommittedBytes: h.CommittedBytes,
		AvailableBytes: h.Available(),
		Active:         h.Active,
		CreatedUnixMs:  h.CreatedMS,
		UpdatedUnixMs:  h.UpdatedMS,
		Online:         online,
		SeenUnixMs:     h.SeenMS,
	}
}

// Proto renders t for the API.
func (t Tariff) Proto() *sharespotv1.Tariff {
	return &sharespotv1.Tariff{Currency: t.Currency, PriceMinor: t.PriceMinor, UnitBytes: t.UnitBytes,
		MinPurchaseBytes: t.MinPurchase, TopupPriceMinor: t.TopUpPriceMinor}
}

// NormalizeBSSID parses a BSSID and returns its canonical lower-case form
// (protocol.NormalizeBSSID), refusing a malformed one as invalid.
func NormalizeBSSID(s string) (string, error) {
	b, err := protocol.NormalizeBSSID(s)
	if err != nil {
		return "", problem.Invalidf("%s", err.Error())
	}
	return b, nil
}

// ValidSSID checks an SSID's length (1–32 raw bytes).
func ValidSSID(ssid []byte) error {
	if len(ssid) < 1 || len(ssid) > 32 {
		return problem.Invalidf("SSID must be 1 to 32 bytes, got %d", len(ssid))
	}
	return nil
}

func validSecurity(s sharespotv1.Security) error {
	if _, ok := sharespotv1.Security_name[int32(s)]; !ok || s == sharespotv1.Security_SECURITY_UNSPECIFIED {
		return problem.Invalidf("security %d is not a known access-point security", s)
	}
	return nil
}

// parseInstruction validates a network-sharing instruction.
func parseInstruction(in *sharespotv1.ShareInstruction) (*Hotspot, error) {
	if in == nil || in.AccessPoint == nil || in.Tariff == nil {
		return nil, problem.Invalidf("instruction needs an access_point and a tariff")
	}
	h := &Hotspot{SSID: in.AccessPoint.Ssid, Security: in.AccessPoint.Security, ShareableBytes: in.ShareableBytes, WarnAtBytes: in.WarnAtBytes}
	var err error
	if err := ValidSSID(h.SSID); err != nil {
		return nil, err
	}
	if h.BSSID, err = NormalizeBSSID(in.AccessPoint.Bssid); err != nil {
		return nil, err
	}
	if err := validSecurity(h.Security); err != nil {
		return nil, err
	}
	t := in.Tariff
	h.Tariff = Tariff{Currency: t.Currency, PriceMinor: t.PriceMinor, UnitBytes: t.UnitBytes, MinPurchase: t.MinPurchaseBytes, TopUpPriceMinor: t.TopupPriceMinor}
	switch {
	case !ledger.ValidCurrency(t.Currency):
		return nil, problem.Invalidf("tariff currency %q is not an ISO 4217 code such as EUR", t.Currency)
	case t.PriceMinor < 0 || t.PriceMinor > MaxPriceMinor:
		return nil, problem.Invalidf("tariff price_minor %d must be between 0 and %d", t.PriceMinor, MaxPriceMinor)
	case t.TopupPriceMinor < 0 || t.TopupPriceMinor > MaxPriceMinor:
		return nil, problem.Invalidf("tariff topup_price_minor %d must be between 0 and %d", t.TopupPriceMinor, MaxPriceMinor)
	case t.UnitBytes <= 0 || t.UnitBytes > MaxShareable:
		return nil, problem.Invalidf("tariff unit_bytes %d must be between 1 and %d", t.UnitBytes, MaxShareable)
	case h.ShareableBytes <= 0 || h.ShareableBytes > MaxShareable:
		return nil, problem.Invalidf("shareable_bytes %d must be between 1 and %d", h.ShareableBytes, MaxShareable)
	case t.MinPurchaseBytes <= 0 || t.MinPurchaseBytes > h.ShareableBytes:
		return nil, problem.Invalidf("tariff min_purchase_bytes %d must be between 1 and shareable_bytes %d", t.MinPurchaseBytes, h.ShareableBytes)
	case h.WarnAtBytes < 0 || h.WarnAtBytes >= h.ShareableBytes:
		return nil, problem.Invalidf("warn_at_bytes %d must be at least 0 and below shareable_bytes %d", h.WarnAtBytes, h.ShareableBytes)
	}
	if _, err := protocol.Price(h.ShareableBytes, max(t.PriceMinor, t.TopupPriceMinor), t.UnitBytes); err != nil {
		return nil, problem.Invalidf("tariff prices the shareable volume beyond what can be paid")
	}
	return h, nil
}

const hotspotCols = `id, host_device_id, bssid, ssid, security, currency, price_minor, unit_bytes, min_purchase_bytes,
	topup_price_minor, shareable_bytes, warn_at_bytes, committed_bytes, active, created_ms, updated_ms, seen_ms, online`

func scanHotspot(sc interface{ Scan(...any) error }) (*Hotspot, error) {
	h := new(Hotspot)
	var active, online int
	var sec int32
	err := sc.Scan(&h.ID, &h.HostDeviceID, &h.BSSID, &h.SSID, &sec, &h.Tariff.Currency, &h.Tariff.PriceMinor, &h.Tariff.UnitBytes,
		&h.Tariff.MinPurchase, &h.Tariff.TopUpPriceMinor, &h.ShareableBytes, &h.WarnAtBytes, &h.CommittedBytes, &active, &h.CreatedMS, &h.UpdatedMS,
		&h.SeenMS, &online)
	h.Active, h.Online = active == 1, online == 1
	h.Security = sharespotv1.Security(sec)
	return h, err
}

// Get loads a hotspot by ID.
func Get(tx *store.Tx, id string) (*Hotspot, error) {
	var h *Hotspot
	if err := tx.Together(Reading(id, &h)); err != nil {
		return nil, err
	}
	return Got(h, id)
}

// Reading is Get as a reading, to send with others (store.Tx.Together):
// the hotspot goes into into, which stays nil when there is none.
func Reading(id string, into **Hotspot) store.Reading {
	return store.Reading{Query: `SELECT ` + hotspotCols + ` FROM hotspots WHERE id = ?`, Args: []any{id}, Row: func(sc store.Scanner) error {
		h, err := scanHotspot(sc)
		if err != nil {
			return fmt.Errorf("registry: load hotspot %s: %w", id, err)
		}
		*into = h
		return nil
	}}
}

// ReadingOfSession is Reading for the hotspot a session was sold on.
func ReadingOfSession(sessionID string, into **Hotspot) store.Reading {
	r := Reading("", into)
	r.Query, r.Args = `SELECT `+hotspotCols+` FROM hotspots WHERE id = (SELECT hotspot_id FROM sessions WHERE id = ?)`, []any{sessionID}
	return r
}

// Got returns what Reading read into h, or Get's error for a hotspot not
// found.
func Got(h *Hotspot, id string) (*Hotspot, error) {
	if h == nil {
		return nil, problem.NotFoundf("hotspot %s not found", id)
	}
	return h, nil
}

// Register stores a new network-sharing instruction for hostDeviceID.
func Register(tx *store.Tx, nowMS int64, hostDeviceID string, in *sharespotv1.ShareInstruction) (*Hotspot, error) {
	h, err := parseInstruction(in)
	if err != nil {
		return nil, err
	}
	// Lock the host's device row so that two concurrent registrations
	// count each other (PostgreSQL; a no-op on SQLite).
	if err := account.LockDevice(tx, hostDeviceID); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	var n int
	if err := tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE host_device_id = ? AND active = 1`, hostDeviceID).Scan(&n); err != nil {
		return nil, fmt.Errorf("registry: count hotspots: %w", err)
	}
	if n >= MaxHotspotsHost {
		return nil, problem.Exhaustedf("a host may have at most %d active hotspots; withdraw one first", MaxHotspotsHost)
	}
	if err := checkBSSIDFree(tx, h.BSSID, ""); err != nil {
		return nil, err
	}
	h.ID = protocol.NewID("hs")
	h.HostDeviceID = hostDeviceID
	h.Active = true
	h.CreatedMS, h.UpdatedMS = nowMS, nowMS
	_, err = tx.Exec(`INSERT INTO hotspots (`+hotspotCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1, ?, ?, ?, 1)`,
		h.ID, h.HostDeviceID, h.BSSID, h.SSID, int32(h.Security), h.Tariff.Currency, h.Tariff.PriceMinor, h.Tariff.UnitBytes,
		h.Tariff.MinPurchase, h.Tariff.TopUpPriceMinor, h.ShareableBytes, h.WarnAtBytes, nowMS, nowMS, nowMS)
	if errors.Is(err, store.ErrConflict) {
		return nil, problem.AlreadyExistsf("BSSID %s is already registered by an active host", h.BSSID)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: insert hotspot: %w", err)
	}
	return h, nil
}

func checkBSSIDFree(tx *store.Tx, bssid, exceptID string) error {
	var id, host string
	err := tx.QueryRow(`SELECT id, host_device_id FROM hotspots WHERE bssid = ? AND active = 1`, bssid).Scan(&id, &host)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("registry: look up BSSID: %w", err)
	case id == exceptID:
		return nil
	default:
		return problem.AlreadyExistsf("BSSID %s is already registered by an active hotspot (%s); withdraw it or update that one", bssid, id)
	}
}

func owned(tx *store.Tx, hostDeviceID, id string) (*Hotspot, error) {
	// Locked (PostgreSQL): Update checks the new volume against the
	// committed volume it read, which a concurrent quote may raise.
	h, err := scanHotspot(tx.QueryRow(`SELECT `+hotspotCols+` FROM hotspots WHERE id = ?`+tx.ForUpdate(), id))
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFoundf("hotspot %s not found", id)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: load hotspot %s: %w", id, err)
	}
	if h.HostDeviceID != hostDeviceID {
		// Do not reveal other hosts' hotspots.
		return nil, problem.NotFoundf("hotspot %s not found among your hotspots", id)
	}
	return h, nil
}

// Update replaces a hotspot's instruction. Sessions already running keep
// the tariff they were quoted; the shareable volume may not drop below what
// is already committed.
func Update(tx *store.Tx, nowMS int64, hostDeviceID, id string, in *sharespotv1.ShareInstruction) (*Hotspot, error) {
	old, err := owned(tx, hostDeviceID, id)
	if err != nil {
		return nil, err
	}
	if !old.Active {
		return nil, problem.WrongStatef("hotspot %s is withdrawn; register it again", id)
	}
	h, err := parseInstruction(in)
	if err != nil {
		return nil, err
	}
	if h.ShareableBytes < old.CommittedBytes {
		return nil, problem.WrongStatef("shareable_bytes %d is below the %d bytes already sold or promised", h.ShareableBytes, old.CommittedBytes)
	}
	if err := checkBSSIDFree(tx, h.BSSID, id); err != nil {
		return nil, err
	}
	h.ID, h.HostDeviceID, h.Active, h.CommittedBytes, h.CreatedMS, h.UpdatedMS = id, hostDeviceID, true, old.CommittedBytes, old.CreatedMS, nowMS
	h.SeenMS, h.Online = nowMS, true
	_, err = tx.Exec(`UPDATE hotspots SET bssid = ?, ssid = ?, security = ?, currency = ?, price_minor = ?, unit_bytes = ?,
		min_purchase_bytes = ?, topup_price_minor = ?, shareable_bytes = ?, warn_at_bytes = ?, updated_ms = ?, seen_ms = ?, online = 1 WHERE id = ?`,
		h.BSSID, h.SSID, int32(h.Security), h.Tariff.Currency, h.Tariff.PriceMinor, h.Tariff.UnitBytes, h.Tariff.MinPurchase,
		h.Tariff.TopUpPriceMinor, h.ShareableBytes, h.WarnAtBytes, nowMS, nowMS, id)
	if errors.Is(err, store.ErrConflict) {
		return nil, problem.AlreadyExistsf("BSSID %s is already registered by an active host", h.BSSID)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: update hotspot %s: %w", id, err)
	}
	return h, nil
}

// Withdraw deactivates a hotspot: it is no longer offered. Running sessions
// go on until they end.
func Withdraw(tx *store.Tx, nowMS int64, hostDeviceID, id string) (*Hotspot, error) {
	h, err := owned(tx, hostDeviceID, id)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(`UPDATE hotspots SET active = 0, updated_ms = ? WHERE id = ?`, nowMS, id); err != nil {
		return nil, fmt.Errorf("registry: withdraw hotspot %s: %w", id, err)
	}
	h.Active, h.UpdatedMS = false, nowMS
	return h, nil
}

// Seen marks the active hotspots of hostDeviceID as present at nowMS (its
// agent's stream is open) and returns how many there are.
func Seen(tx *store.Tx, hostDeviceID string, nowMS int64) (int64, error) {
	res, err := tx.Exec(`UPDATE hotspots SET seen_ms = ?, online = 1 WHERE host_device_id = ? AND active = 1`, nowMS, hostDeviceID)
	if err != nil {
		return 0, fmt.Errorf("registry: mark %s present: %w", hostDeviceID, err)
	}
	return res.RowsAffected()
}

// presentChunk is how many devices one statement of HostingAmong or
// SeenAll names. Every statement names exactly this many (the last
// chunk repeats its last device), so each is one cached statement.
const presentChunk = 128

// chunks calls fn with deviceIDs presentChunk at a time, each chunk padded
// to presentChunk with its last device.
func chunks(deviceIDs []string, fn func(args []any) error) error {
	args := make([]any, presentChunk)
	for len(deviceIDs) > 0 {
		n := min(len(deviceIDs), presentChunk)
		for i := range args {
			args[i] = deviceIDs[min(i, n-1)]
		}
		if err := fn(args); err != nil {
			return err
		}
		deviceIDs = deviceIDs[n:]
	}
	return nil
}

var presentIn = "?" + strings.Repeat(", ?", presentChunk-1)

// HostingAmong returns those of deviceIDs that have an active hotspot.
func HostingAmong(tx *store.Tx, deviceIDs []string) ([]string, error) {
	var out []string
	err := chunks(deviceIDs, func(args []any) error {
		rows, err := tx.Query(`SELECT DISTINCT host_device_id FROM hotspots WHERE active = 1 AND host_device_id IN (`+presentIn+`)`, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			out = append(out, id)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("registry: which of %d devices host: %w", len(deviceIDs), err)
	}
	return out, nil
}

// SeenAll is Seen for many hosts at once.
func SeenAll(tx *store.Tx, hostDeviceIDs []string, nowMS int64) error {
	err := chunks(hostDeviceIDs, func(args []any) error {
		_, err := tx.Exec(`UPDATE hotspots SET seen_ms = ?, online = 1 WHERE active = 1 AND host_device_id IN (`+presentIn+`)`, append([]any{nowMS}, args...)...)
		return err
	})
	if err != nil {
		return fmt.Errorf("registry: mark %d hosts present: %w", len(hostDeviceIDs), err)
	}
	return nil
}

// Gone marks the hotspots of hostDeviceID offline when its agent's stream,
// whose last mark was seenMS, closed: only those no later mark (another
// stream, on this replica or another) has touched since.
func Gone(tx *store.Tx, hostDeviceID string, seenMS int64) error {
	if _, err := tx.Exec(`UPDATE hotspots SET online = 0 WHERE host_device_id = ? AND active = 1 AND seen_ms = ?`, hostDeviceID, seenMS); err != nil {
		return fmt.Errorf("registry: mark %s gone: %w", hostDeviceID, err)
	}
	return nil
}

// Left marks every active hotspot of hostDeviceID offline: its agent
// stopped and said so.
func Left(tx *store.Tx, hostDeviceID string) error {
	if _, err := tx.Exec(`UPDATE hotspots SET online = 0 WHERE host_device_id = ? AND active = 1`, hostDeviceID); err != nil {
		return fmt.Errorf("registry: mark %s left: %w", hostDeviceID, err)
	}
	return nil
}

// Hosting reports whether hostDeviceID has an active hotspot.
func Hosting(tx *store.Tx, hostDeviceID string) (bool, error) {
	var n int64
	if err := tx.QueryRow(`SELECT COUNT(*) FROM hotspots WHERE host_device_id = ? AND active = 1`, hostDeviceID).Scan(&n); err != nil {
		return false, fmt.Errorf("registry: hotspots of %s: %w", hostDeviceID, err)
	}
	return n > 0, nil
}

// List returns a host's hotspots, newest first.
func List(tx *store.Tx, hostDeviceID string) ([]*Hotspot, error) {
	rows, err := tx.Query(`SELECT `+hotspotCols+` FROM hotspots WHERE host_device_id = ? ORDER BY created_ms DESC, id`, hostDeviceID)
	if err != nil {
		return nil, fmt.Errorf("registry: list hotspots: %w", err)
	}
	defer rows.Close()
	var out []*Hotspot
	for rows.Next() {
		h, err := scanHotspot(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// Discover returns the available set for a candidate set: the candidates
// that are registered and active under the same BSSID and SSID, with volume
// left and their host present at nowMS (Present), strongest signal first;
// and apart, the candidates registered whose hosts are away. It looks each
// BSSID up in the index; it never scans the table.
func Discover(tx *store.Tx, cands []*sharespotv1.Candidate, nowMS int64, away time.Duration) ([]*sharespotv1.Offer, []*sharespotv1.OfflineHotspot, error) {
	d, err := Discovering(cands, nowMS, away)
	if err != nil {
		return nil, nil, err
	}
	if err := tx.Together(d.Reading()); err != nil {
		return nil, nil, err
	}
	offers, offline := d.Result()
	return offers, offline, nil
}

// Discovery is Discover as a reading, to be read with others
// (store.Tx.Last): Discovering checks the candidates, Reading reads their
// hotspots, Result is what Discover returns.
type Discovery struct {
	byBSSID map[string]*sharespotv1.Candidate
	bssids  []any // each candidate's BSSID once, normalized
	nowMS   int64
	away    time.Duration
	out     []*sharespotv1.Offer
	offline []*sharespotv1.OfflineHotspot
}

// Discovering checks a candidate set: its size and each candidate's
// fields.
func Discovering(cands []*sharespotv1.Candidate, nowMS int64, away time.Duration) (*Discovery, error) {
	if len(cands) == 0 {
		return nil, problem.Invalidf("candidate set is empty: scan first")
	}
	if len(cands) > MaxCandidates {
		return nil, problem.Invalidf("candidate set has %d entries; at most %d", len(cands), MaxCandidates)
	}
	d := &Discovery{byBSSID: make(map[string]*sharespotv1.Candidate, len(cands)), bssids: make([]any, 0, len(cands)), nowMS: nowMS, away: away}
	for i, c := range cands {
		b, err := NormalizeBSSID(c.GetBssid())
		if err != nil {
			return nil, problem.Invalidf("candidate %d: %v", i, err)
		}
		if len(c.Ssid) > 32 {
			return nil, problem.Invalidf("candidate %d: SSID is %d bytes; at most 32", i, len(c.Ssid))
		}
		if c.SignalDbm < -150 || c.SignalDbm > 30 {
			return nil, problem.Invalidf("candidate %d: signal %d dBm is out of range", i, c.SignalDbm)
		}
		if c.FrequencyMhz < 0 || c.FrequencyMhz > 100000 {
			return nil, problem.Invalidf("candidate %d: frequency %d MHz is out of range", i, c.FrequencyMhz)
		}
		if _, dup := d.byBSSID[b]; !dup {
			d.bssids = append(d.bssids, b)
		}
		d.byBSSID[b] = c
	}
	return d, nil
}

// Hosts is a subquery of the host devices of the candidates' active
// hotspots, with its arguments: for a reading sent with the discovery's
// (each host's record, beside its offer).
func (d *Discovery) Hosts() (string, []any) {
	return `SELECT host_device_id FROM hotspots` + d.where(), d.bssids
}

// where selects the candidates' active hotspots (the arguments: bssids).
func (d *Discovery) where() string {
	return ` WHERE active = 1 AND bssid IN (?` + strings.Repeat(", ?", len(d.bssids)-1) + `)`
}

// Reading reads the candidates' active hotspots (anew: what an earlier
// reading took is dropped).
func (d *Discovery) Reading() store.Reading {
	d.out, d.offline = nil, nil
	return store.Reading{Query: `SELECT ` + hotspotCols + ` FROM hotspots` + d.where(), Args: d.bssids, Row: d.row}
}

// row takes one hotspot into the offers or the offline.
func (d *Discovery) row(sc store.Scanner) error {
	h, err := scanHotspot(sc)
	if err != nil {
		return fmt.Errorf("registry: discover: %w", err)
	}
	c := d.byBSSID[h.BSSID]
	// A BSSID seen with another SSID is not the registered network.
	if c == nil || string(c.Ssid) != string(h.SSID) {
		return nil
	}
	if !h.Present(d.nowMS, d.away) {
		d.offline = append(d.offline, &sharespotv1.OfflineHotspot{HotspotId: h.ID, SeenUnixMs: h.SeenMS, SignalDbm: c.SignalDbm,
			AccessPoint: &sharespotv1.AccessPoint{Ssid: h.SSID, Bssid: h.BSSID, Security: h.Security}})
		return nil
	}
	if h.Available() < h.Tariff.MinPurchase {
		return nil
	}
	d.out = append(d.out, &sharespotv1.Offer{
		HotspotId:      h.ID,
		HostDeviceId:   h.HostDeviceID,
		AccessPoint:    &sharespotv1.AccessPoint{Ssid: h.SSID, Bssid: h.BSSID, Security: h.Security},
		Tariff:         h.Tariff.Proto(),
		AvailableBytes: h.Available(),
		SignalDbm:      c.SignalDbm,
		FrequencyMhz:   c.FrequencyMhz,
	})
	return nil
}

// Result is what was read: the offers, strongest signal first, and the
// hotspots whose hosts are away.
func (d *Discovery) Result() ([]*sharespotv1.Offer, []*sharespotv1.OfflineHotspot) {
	out, offline := d.out, d.offline
	sort.Slice(out, func(i, j int) bool {
		if out[i].SignalDbm != out[j].SignalDbm {
			return out[i].SignalDbm > out[j].SignalDbm
		}
		return out[i].HotspotId < out[j].HotspotId
	})
	sort.Slice(offline, func(i, j int) bool { return offline[i].SignalDbm > offline[j].SignalDbm })
	return out, offline
}
