package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Result is what Verify found, in the shape GET .../audit-events/verify
// answers with.
type Result struct {
	// OK is true when the whole stored chain is intact.
	OK bool `json:"ok"`
	// Events counts the events verified intact: all of them when OK, and
	// those before the first bad one otherwise.
	Events int64 `json:"events"`
	// FirstBadEvent names the first event that was altered, removed or
	// put out of order; nil when OK.
	FirstBadEvent *BadEvent `json:"first_bad_event,omitempty"`
	// Reason says what is wrong with it, for a person.
	Reason string `json:"reason,omitempty"`
}

// BadEvent names an event by its ID and its position in the chain. A
// removed event has no ID left to name: only Seq is set.
type BadEvent struct {
	ID  string `json:"id,omitempty"`
	Seq int64  `json:"seq"`
}

// Verify walks orgID's chain as stored and checks it against its bounds
// (see store.AuditBounds): every event's hash recomputed over its content
// and the hash before it, seq numbers one after another from the anchor
// that retention left to the head of the chain, and each event linking to
// the one before. It reports the first event that fails; an error is a
// failure to read, not a broken chain.
//
// Events appended while Verify runs are checked only up to the head it read
// first, then checked not to lie beyond the head read at the end. When
// retention trims the chain meanwhile, the walk starts over once.
func Verify(ctx context.Context, st store.Audit, orgID string) (Result, error) {
	var res Result
	for attempt := 0; attempt < 2; attempt++ {
		bounds, err := st.AuditBounds(ctx, orgID)
		if err != nil {
			return Result{}, fmt.Errorf("read audit bounds: %w", err)
		}
		res, err = verifyOnce(ctx, st, orgID, bounds)
		if err != nil {
			return Result{}, err
		}
		if res.OK {
			return res, nil
		}
		after, err := st.AuditBounds(ctx, orgID)
		if err != nil {
			return Result{}, fmt.Errorf("read audit bounds: %w", err)
		}
		if after.AnchorSeq == bounds.AnchorSeq {
			return res, nil
		}
	}
	return res, nil
}

// errVerifyStop ends a chain walk at the first bad event.
var errVerifyStop = errors.New("stop")

func verifyOnce(ctx context.Context, st store.Audit, orgID string, b store.AuditBounds) (Result, error) {
	var (
		res    Result
		seq    = b.AnchorSeq // of the last good event
		prev   = b.AnchorHash
		lastID string
		beyond []BadEvent // events past the head read at the start
	)
	bad := func(id string, at int64, format string, args ...any) error {
		res.FirstBadEvent = &BadEvent{ID: id, Seq: at}
		res.Reason = fmt.Sprintf(format, args...)
		return errVerifyStop
	}
	err := st.AuditChain(ctx, orgID, func(e *keybridge.AuditEvent) error {
		if e.Seq > b.HeadSeq {
			beyond = append(beyond, BadEvent{ID: e.ID, Seq: e.Seq})
			return nil
		}
		switch {
		case e.Seq <= seq:
			return bad(e.ID, e.Seq, "event %d comes after event %d: the chain is out of order", e.Seq, seq)
		case e.Seq > seq+1:
			return bad("", seq+1, "event %d was removed: the chain jumps from %d to %d (%s)", seq+1, seq, e.Seq, e.ID)
		case !bytes.Equal(e.PrevHash, prev) && seq == b.AnchorSeq && b.AnchorSeq > 0:
			return bad(e.ID, e.Seq, "event %d does not link to the last event retention removed: altered, or older events were removed", e.Seq)
		case !bytes.Equal(e.PrevHash, prev) && seq > b.AnchorSeq && bytes.Equal(e.ComputeHash(e.PrevHash), e.Hash):
			// This event still hashes with the link it recorded, so the
			// one before it changed, its hash recomputed to match.
			res.Events--
			return bad(lastID, seq, "event %d was altered and its hash recomputed: event %d no longer links to it", seq, e.Seq)
		case !bytes.Equal(e.PrevHash, prev):
			return bad(e.ID, e.Seq, "event %d does not link to the event before it: altered", e.Seq)
		case !bytes.Equal(e.ComputeHash(e.PrevHash), e.Hash):
			return bad(e.ID, e.Seq, "event %d was altered: its content does not match its hash", e.Seq)
		}
		seq, prev, lastID = e.Seq, e.Hash, e.ID
		res.Events++
		return nil
	})
	if errors.Is(err, errVerifyStop) {
		return res, nil
	}
	if err != nil {
		return Result{}, fmt.Errorf("read audit chain: %w", err)
	}
	switch {
	case seq < b.HeadSeq:
		bad("", seq+1, "event %d was removed: the chain ends at %d but its head is %d", seq+1, seq, b.HeadSeq)
		return res, nil
	case seq > b.AnchorSeq && !bytes.Equal(prev, b.HeadHash):
		res.Events--
		bad(lastID, seq, "event %d was altered: its hash is not the one the chain's head recorded", seq)
		return res, nil
	}
	if len(beyond) > 0 {
		// Events past the first head are fine if they were appended
		// meanwhile: then the head has moved past them too.
		now, err := st.AuditBounds(ctx, orgID)
		if err != nil {
			return Result{}, fmt.Errorf("read audit bounds: %w", err)
		}
		for _, e := range beyond {
			if e.Seq > now.HeadSeq {
				bad(e.ID, e.Seq, "event %d was not appended through the log: it lies beyond the chain's head %d", e.Seq, now.HeadSeq)
				return res, nil
			}
		}
	}
	res.OK = true
	return res, nil
}
