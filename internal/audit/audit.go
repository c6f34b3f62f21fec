// Package audit writes the audit log (SPEC §8): it builds events from the
// request in the context, appends them in the transaction of the change
// they record, redacts secrets from their diffs, and verifies each org's
// hash chain.
package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Record appends an event for action on res in orgID to the log, inside tx.
// The actor and request details come from ctx (the principal, or the
// system when there is none). It must be called in the transaction of the
// change, so that no change lands without its event: when Record fails,
// the caller returns its error and the change rolls back.
//
// changes may come from Diff or be built by hand; either way fields that
// are secret by name are redacted, and values are stored in the plain JSON
// form they read back as, so the event's hash verifies later.
func Record(ctx context.Context, tx store.Store, orgID, action string, res keybridge.Resource, changes map[string]keybridge.Change) error {
	changes, err := normalize(changes)
	if err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	e := &keybridge.AuditEvent{
		Time:     tx.Now(),
		OrgID:    orgID,
		Action:   action,
		Resource: res,
		Changes:  changes,
		Actor:    keybridge.Actor{Type: keybridge.ActorSystem, ID: "system"},
	}
	if p := keybridge.PrincipalFromContext(ctx); p != nil {
		e.Actor = p.Actor()
	}
	info := keybridge.RequestInfoFromContext(ctx)
	e.IP, e.UserAgent, e.RequestID = info.IP, info.UserAgent, info.RequestID
	if err := tx.AppendAuditEvent(ctx, e); err != nil {
		return fmt.Errorf("audit %s: %w", action, err)
	}
	return nil
}

// RecordUser records an event about user u's own account (a login, a
// change of name or password) in the chain of each org u belongs to: an
// account has no org of its own, and every org's admins see what happens
// to their members. The event of a user in no org goes to the chain of no
// org (""), so that it is not left out.
func RecordUser(ctx context.Context, tx store.Store, u *keybridge.User, action string, changes map[string]keybridge.Change) error {
	oms, err := tx.OrgsForUser(ctx, u.ID)
	if err != nil {
		return fmt.Errorf("audit %s: list the user's orgs: %w", action, err)
	}
	res := keybridge.Resource{Type: "user", ID: u.ID, Name: u.Email}
	if len(oms) == 0 {
		return Record(ctx, tx, "", action, res, changes)
	}
	for _, om := range oms {
		if err := Record(ctx, tx, om.Org.ID, action, res, changes); err != nil {
			return err
		}
	}
	return nil
}

// normalize round-trips changes through JSON, the form the store keeps
// and hashes (numbers as json.Number, typed strings as strings), and
// redacts fields that are secret by name.
func normalize(changes map[string]keybridge.Change) (map[string]keybridge.Change, error) {
	if len(changes) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(changes)
	if err != nil {
		return nil, fmt.Errorf("encode changes: %w", err)
	}
	var out map[string]keybridge.Change
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	if err := d.Decode(&out); err != nil {
		return nil, fmt.Errorf("decode changes: %w", err)
	}
	return Redact(out), nil
}
