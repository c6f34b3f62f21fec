// Package audit builds audit events from the request in the context and
// appends them in the transaction of the change they record.
package audit

import (
	"context"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// Record appends an event for action on res in orgID to the log, inside tx.
// The actor and request details come from ctx (the principal, or the
// system when there is none). It must be called in the transaction of the
// change, so that no change lands without its event.
func Record(ctx context.Context, tx store.Store, orgID, action string, res keybridge.Resource, changes map[string]keybridge.Change) error {
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
	return tx.AppendAuditEvent(ctx, e)
}
