// Package retention removes usage rows and audit events past their
// configured age, and expired sessions. Usage goes quietly (it is
// accounting data, kept 90 days unless configured otherwise). Audit events
// are kept forever unless an admin sets a retention, and even then never
// vanish unnoticed: each removal is logged and recorded as an audit event of
// its own, in the transaction that removes them, and the chain stays
// verifiable from the anchor the store keeps.
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Defaults for Options.
const (
	DefaultUsage = 90 * 24 * time.Hour
	DefaultEvery = time.Hour
)

// ActionTrim is the audit action recorded when retention removes events.
const ActionTrim = "audit_log.trim"

// Options says how long to keep what.
type Options struct {
	// Usage is how long usage rows are kept (default 90 days); a negative
	// value keeps them forever.
	Usage time.Duration
	// Audit is how long audit events are kept; zero keeps them forever.
	Audit time.Duration
	// Every is how often the job runs (default 1 h).
	Every  time.Duration
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Usage == 0 {
		o.Usage = DefaultUsage
	}
	if o.Every <= 0 {
		o.Every = DefaultEvery
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// UsageKeptSince returns the oldest time from which usage rows are all
// still there at now when they are kept for keep (0 means DefaultUsage):
// the store cuts at the start of a UTC day (DeleteUsageBefore), so this is
// the start of the UTC day keep before now. A negative keep keeps rows
// forever and returns the zero time.
func UsageKeptSince(now time.Time, keep time.Duration) time.Time {
	if keep == 0 {
		keep = DefaultUsage
	}
	if keep < 0 {
		return time.Time{}
	}
	return now.Add(-keep).UTC().Truncate(24 * time.Hour)
}

// Run removes expired rows now and then every opts.Every until ctx ends.
// A failed pass is logged and tried again at the next tick: retention is
// housekeeping and must not stop the server.
func Run(ctx context.Context, st store.Store, opts Options) error {
	opts = opts.withDefaults()
	t := time.NewTicker(opts.Every)
	defer t.Stop()
	for {
		if _, err := Once(ctx, st, opts); err != nil && ctx.Err() == nil {
			opts.Logger.ErrorContext(ctx, "retention pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Report is what one pass removed.
type Report struct {
	UsageRows int64
	// Sessions counts removed expired sessions.
	Sessions int64
	// AuditEvents counts removed events per org ID.
	AuditEvents map[string]int
}

// Once runs one retention pass at the current time and reports what it
// removed. It goes on past an org whose audit trim fails and returns the
// errors joined.
func Once(ctx context.Context, st store.Store, opts Options) (Report, error) {
	opts = opts.withDefaults()
	rep := Report{AuditEvents: map[string]int{}}
	var errs []error
	now := st.Now()
	if opts.Usage > 0 {
		before := now.Add(-opts.Usage)
		n, err := st.DeleteUsageBefore(ctx, before)
		rep.UsageRows = n
		if err != nil {
			errs = append(errs, fmt.Errorf("usage: %w", err))
		}
		if n > 0 {
			opts.Logger.InfoContext(ctx, "removed usage rows past retention", "rows", n, "before", before)
		}
	}
	// Expired sessions no longer authenticate (SessionByHash skips them);
	// removing them keeps the table from growing with every login.
	n, err := st.DeleteExpiredSessions(ctx, now)
	rep.Sessions = n
	if err != nil {
		errs = append(errs, fmt.Errorf("sessions: %w", err))
	}
	if opts.Audit > 0 {
		orgs, err := st.AuditOrgs(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("list audit chains: %w", err))
		}
		before := now.Add(-opts.Audit)
		for _, org := range orgs {
			n, err := trimAudit(ctx, st, org, before)
			if err != nil {
				errs = append(errs, fmt.Errorf("audit events of org %q: %w", org, err))
				continue
			}
			if n > 0 {
				rep.AuditEvents[org] = n
				opts.Logger.WarnContext(ctx, "removed audit events past retention",
					"org_id", org, "events", n, "before", before, "retention", opts.Audit.String())
			}
		}
	}
	return rep, errors.Join(errs...)
}

// trimAudit removes orgID's events older than before and, in the same
// transaction, appends an event that says how many went and which part of
// the chain they were: if the record cannot be written, nothing is removed.
func trimAudit(ctx context.Context, st store.Store, orgID string, before time.Time) (int, error) {
	var n int
	err := st.InTx(ctx, func(tx store.Store) error {
		old, err := tx.AuditBounds(ctx, orgID)
		if err != nil {
			return err
		}
		n, err = tx.DeleteAuditEventsBefore(ctx, orgID, before)
		if err != nil || n == 0 {
			return err
		}
		cur, err := tx.AuditBounds(ctx, orgID)
		if err != nil {
			return err
		}
		return audit.Record(ctx, tx, orgID, ActionTrim,
			keybridge.Resource{Type: "audit_log", ID: orgID},
			map[string]keybridge.Change{
				"removed_events": {Old: nil, New: n},
				"before":         {Old: nil, New: before.UTC().Format(time.RFC3339Nano)},
				"first_seq":      {Old: old.AnchorSeq + 1, New: cur.AnchorSeq + 1},
			})
	})
	return n, err
}
