package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// AppendAuditEvent implements store.Audit. The org's row in audit_heads is
// locked for the rest of the transaction (PostgreSQL; SQLite's single
// writer serializes anyway), so appends of one org take seq numbers one at
// a time and each links to the hash before it.
//
// e.Time is cut to the microsecond and e.Changes replaced by its JSON
// round trip before hashing: the hash must be the one a verifier computes
// from the stored event, so it is computed from what is stored.
func (s *Store) AppendAuditEvent(ctx context.Context, e *keybridge.AuditEvent) error {
	return s.write(ctx, func(s *Store) error {
		if e.ID == "" {
			e.ID = newID()
		}
		if e.Time.IsZero() {
			e.Time = s.Now()
		}
		e.Time = e.Time.UTC().Truncate(time.Microsecond)
		changes, err := json.Marshal(e.Changes)
		if err != nil {
			return fmt.Errorf("encode audit changes: %w", err)
		}
		if e.Changes, err = decodeChanges(changes); err != nil {
			return err
		}
		head, err := s.lockAuditHead(ctx, e.OrgID)
		if err != nil {
			return err
		}
		e.Seq = head.HeadSeq + 1
		e.PrevHash = head.HeadHash
		e.Hash = e.ComputeHash(e.PrevHash)
		if _, err := s.exec(ctx, `INSERT INTO audit_events (id, org_id, seq, time, actor_type, actor_id, actor_email,
			action, resource_type, resource_id, resource_name, ip, user_agent, request_id, changes, prev_hash, hash)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			e.ID, e.OrgID, e.Seq, s.ts(e.Time), string(e.Actor.Type), e.Actor.ID, e.Actor.Email,
			e.Action, e.Resource.Type, e.Resource.ID, e.Resource.Name, e.IP, e.UserAgent, e.RequestID,
			string(changes), nonNil(e.PrevHash), e.Hash); err != nil {
			// A taken seq means the head row is behind the chain (altered
			// or lost): nothing the caller did conflicts, so this is not
			// a 409 but an internal error, with the detail for the log.
			return fmt.Errorf("append audit event %d of org %q (is its audit_heads row behind its events?): %w", e.Seq, e.OrgID, err)
		}
		_, err = s.exec(ctx, `UPDATE audit_heads SET seq = ?, hash = ? WHERE org_id = ?`, e.Seq, e.Hash, e.OrgID)
		return err
	})
}

// lockAuditHead returns orgID's chain bounds with its head row locked,
// creating the row for the org's first event. Two first events of one org
// in PostgreSQL both insert; ON CONFLICT DO NOTHING lets the second wait
// for the first and then lock the row it made.
func (s *Store) lockAuditHead(ctx context.Context, orgID string) (store.AuditBounds, error) {
	b, err := s.auditHead(ctx, orgID, s.db.Dialect.ForUpdate)
	if !errors.Is(err, sql.ErrNoRows) {
		return b, err
	}
	if _, err := s.exec(ctx, `INSERT INTO audit_heads (org_id, seq, hash, anchor_seq, anchor_hash) VALUES (?, 0, ?, 0, ?)
		ON CONFLICT (org_id) DO NOTHING`, orgID, []byte{}, []byte{}); err != nil {
		return b, err
	}
	return s.auditHead(ctx, orgID, s.db.Dialect.ForUpdate)
}

// auditHead reads orgID's row of audit_heads, suffix being a lock clause.
func (s *Store) auditHead(ctx context.Context, orgID, suffix string) (store.AuditBounds, error) {
	var b store.AuditBounds
	err := s.queryRow(ctx, `SELECT seq, hash, anchor_seq, anchor_hash FROM audit_heads WHERE org_id = ?`+suffix, orgID).
		Scan(&b.HeadSeq, &b.HeadHash, &b.AnchorSeq, &b.AnchorHash)
	return b, err
}

// AuditBounds implements store.Audit. Inside a transaction it locks the
// chain's head like an append does (PostgreSQL; SQLite's single writer
// serializes anyway): a caller there reads the bounds to change the chain,
// and a retention pass of another replica trimming the same chain must
// finish before it reads, or it records bounds that no longer hold.
func (s *Store) AuditBounds(ctx context.Context, orgID string) (store.AuditBounds, error) {
	lock := ""
	if s.tx != nil {
		lock = s.db.Dialect.ForUpdate
	}
	b, err := s.auditHead(ctx, orgID, lock)
	if errors.Is(err, sql.ErrNoRows) {
		return store.AuditBounds{}, nil
	}
	return b, err
}

// nonNil turns a nil hash into an empty one: the column is NOT NULL, and
// the first event of a chain links to nothing.
func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// decodeChanges reads stored changes. Numbers stay json.Number, so a
// large integer reads back exactly and the event hashes as it did when
// appended.
func decodeChanges(b []byte) (map[string]keybridge.Change, error) {
	var changes map[string]keybridge.Change
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&changes); err != nil {
		return nil, fmt.Errorf("decode audit changes: %w", err)
	}
	return changes, nil
}

const auditColumns = `id, org_id, seq, time, actor_type, actor_id, actor_email, action, resource_type, resource_id,
	resource_name, ip, user_agent, request_id, changes, prev_hash, hash`

func scanAuditEvent(sc rowScanner) (*keybridge.AuditEvent, error) {
	var e keybridge.AuditEvent
	var changes string
	err := sc.Scan(&e.ID, &e.OrgID, auditSeqCol{&e.Seq}, auditTimeCol{&e.Time}, &e.Actor.Type, &e.Actor.ID, &e.Actor.Email,
		&e.Action, &e.Resource.Type, &e.Resource.ID, &e.Resource.Name, &e.IP, &e.UserAgent, &e.RequestID,
		&changes, &e.PrevHash, &e.Hash)
	if err != nil {
		return nil, err
	}
	if e.Changes, err = decodeChanges([]byte(changes)); err != nil {
		// Only a hand edit of the database stores changes that do not
		// read: the event still reads, showing what is stored, so that
		// lists work and verify names it as altered (it cannot hash as
		// it did when appended) instead of failing.
		e.Changes = map[string]keybridge.Change{unreadableChanges: {New: changes}}
	}
	return &e, nil
}

// auditTimeCol scans an event's time. A value that is no time (SQLite
// keeps what a hand edit writes) reads as the zero time, so the event
// lists and verify names it as altered instead of failing.
type auditTimeCol struct{ t *time.Time }

// Scan implements sql.Scanner.
func (c auditTimeCol) Scan(src any) error {
	if t, ok, err := scanTime(src); err == nil && ok {
		*c.t = t
	}
	return nil
}

// auditSeqCol scans an event's seq. A value that is no integer (SQLite
// keeps what a hand edit writes) reads as -1, a place in no chain, so the
// event lists and verify finds its place empty instead of failing.
type auditSeqCol struct{ n *int64 }

// Scan implements sql.Scanner.
func (c auditSeqCol) Scan(src any) error {
	var n sql.NullInt64
	if err := n.Scan(src); err != nil || !n.Valid {
		*c.n = -1
		return nil
	}
	*c.n = n.Int64
	return nil
}

// unreadableChanges is the one field of the changes of an event whose
// stored changes are not the JSON object Keybridge wrote: its new value is
// the stored text.
const unreadableChanges = "(unreadable)"

// ListAuditEvents implements store.AuditEvents. Newest first means by time,
// the order a reader sees, then by ID (UUIDv7, so by creation among events
// of one transaction); the cursor is that pair.
func (s *Store) ListAuditEvents(ctx context.Context, f store.AuditFilter, page store.Page) ([]keybridge.AuditEvent, string, error) {
	limit := limitOf(page)
	before, err := decodeCursor(page.Cursor, 2)
	if err != nil {
		return nil, "", err
	}
	where, args := `WHERE 1 = 1`, []any{}
	add := func(cond string, a ...any) {
		where += ` AND ` + cond
		args = append(args, a...)
	}
	if f.OrgID != "" {
		add(`org_id = ?`, f.OrgID)
	}
	if f.Action != "" {
		add(`action = ?`, f.Action)
	}
	if f.Actor != "" {
		add(`(actor_id = ? OR actor_email = ?)`, f.Actor, keybridge.NormalizeEmail(f.Actor))
	}
	if f.ResourceType != "" {
		add(`resource_type = ?`, f.ResourceType)
	}
	if f.ResourceID != "" {
		add(`resource_id = ?`, f.ResourceID)
	}
	if !f.Since.IsZero() {
		add(`time >= ?`, s.ts(f.Since))
	}
	if !f.Until.IsZero() {
		add(`time < ?`, s.ts(f.Until))
	}
	if before != nil {
		micros, err := strconv.ParseInt(before[0], 10, 64)
		if err != nil {
			return nil, "", keybridge.FieldError("cursor", "is not a cursor from a previous page")
		}
		t := s.ts(time.UnixMicro(micros))
		add(`(time < ? OR (time = ? AND id < ?))`, t, t, before[1])
	}
	out, err := queryAll(ctx, s, scanAuditEvent, `SELECT `+auditColumns+` FROM audit_events `+where+
		` ORDER BY time DESC, id DESC LIMIT ?`, append(args, limit+1)...)
	if err != nil {
		return nil, "", err
	}
	out, next := trimPage(out, limit, func(e *keybridge.AuditEvent) []string {
		return []string{strconv.FormatInt(e.Time.UnixMicro(), 10), e.ID}
	})
	return out, next, nil
}

// auditChainBatch is how many events AuditChain reads at a time. Reading
// in batches keeps memory flat on a long chain and no query open while fn
// runs, so fn may use the store (PostgreSQL connections cannot run a
// second query while one streams rows).
const auditChainBatch = 500

// AuditChain implements store.Audit.
func (s *Store) AuditChain(ctx context.Context, orgID string, fn func(e *keybridge.AuditEvent) error) error {
	var after int64 = -1
	for {
		batch, err := s.auditBatch(ctx, orgID, after)
		if err != nil {
			return err
		}
		for _, e := range batch {
			if err := fn(e); err != nil {
				return err
			}
		}
		if len(batch) < auditChainBatch {
			return nil
		}
		after = batch[len(batch)-1].Seq
	}
}

func (s *Store) auditBatch(ctx context.Context, orgID string, after int64) ([]*keybridge.AuditEvent, error) {
	rows, err := s.query(ctx, `SELECT `+auditColumns+` FROM audit_events WHERE org_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
		orgID, after, auditChainBatch)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var batch []*keybridge.AuditEvent
	for rows.Next() {
		e, err := scanAuditEvent(rows)
		if err != nil {
			return nil, err
		}
		batch = append(batch, e)
	}
	return batch, rows.Err()
}

// DeleteAuditEventsBefore implements store.Audit. It removes a prefix of
// the chain: every event up to the last one before the first event at or
// after t (an event is not removed while an older-seq one stays, so the
// rest links up). The removed prefix's last seq and hash become the
// chain's anchor (see store.AuditBounds).
func (s *Store) DeleteAuditEventsBefore(ctx context.Context, orgID string, t time.Time) (int, error) {
	var removed int
	err := s.write(ctx, func(s *Store) error {
		head, err := s.auditHead(ctx, orgID, s.db.Dialect.ForUpdate)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		var first sql.NullInt64
		if err := s.queryRow(ctx, `SELECT MIN(seq) FROM audit_events WHERE org_id = ? AND time >= ?`,
			orgID, s.ts(t)).Scan(&first); err != nil {
			return err
		}
		cut := head.HeadSeq
		if first.Valid {
			cut = first.Int64 - 1
		}
		if cut <= head.AnchorSeq {
			return nil
		}
		var anchor []byte
		if err := s.queryRow(ctx, `SELECT hash FROM audit_events WHERE org_id = ? AND seq = ?`, orgID, cut).
			Scan(&anchor); err != nil {
			return fmt.Errorf("read audit anchor %d: %w", cut, err)
		}
		res, err := s.exec(ctx, `DELETE FROM audit_events WHERE org_id = ? AND seq <= ?`, orgID, cut)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		removed = int(n)
		_, err = s.exec(ctx, `UPDATE audit_heads SET anchor_seq = ?, anchor_hash = ? WHERE org_id = ?`, cut, anchor, orgID)
		return err
	})
	return removed, err
}
