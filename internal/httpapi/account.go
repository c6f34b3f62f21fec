package httpapi

import (
	"net/http"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

type updateMeRequest struct {
	Name *string `json:"name"`
}

func (in *updateMeRequest) Validate() error {
	if in.Name == nil {
		return keybridge.FieldError("name", "is required")
	}
	n, why := userName(*in.Name)
	if why != "" {
		return keybridge.FieldError("name", why)
	}
	in.Name = &n
	return nil
}

// updateMe changes the caller's display name (an extension of SPEC §2,
// which has no call for it; docs/identity-and-keys.md) and answers as GET
// /users/me. A session or any platform key of the user may: the name is
// the user's own label, it opens nothing, so unlike a password it needs no
// particular permission. An unchanged name writes nothing and records no
// event; a change is audited as user.update in each of the user's orgs,
// as a password change is.
func (s *Server) updateMe(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p := principal(r)
	in, err := decode[updateMeRequest](w, r)
	if err != nil {
		return err
	}
	if p.Type != keybridge.ActorUser && p.Type != keybridge.ActorAPIKey {
		return keybridge.Errorf(keybridge.EForbidden, "only a user or a platform key may change a user's name")
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		cur, err := tx.User(ctx, p.UserID)
		if err != nil {
			return err
		}
		changes := map[string]keybridge.Change{}
		diff(changes, "name", cur.Name, *in.Name)
		if len(changes) == 0 {
			return nil
		}
		cur.Name = *in.Name
		if err := tx.UpdateUser(ctx, cur); err != nil {
			return err
		}
		return audit.RecordUser(ctx, tx, cur, "user.update", changes)
	})
	if err != nil {
		return err
	}
	return s.me(w, r)
}
