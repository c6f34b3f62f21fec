package httpapi

import (
	"net/http"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

type changePasswordRequest struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

func (in *changePasswordRequest) Validate() error {
	v := keybridge.Validation{}
	if why := passwordProblem(in.NewPassword); why != "" {
		v.Add("new_password", why)
	}
	if len(in.CurrentPassword) > maxPassword {
		v.Add("current_password", "must be at most 256 characters")
	}
	return v.Err()
}

// errWrongCurrentPassword answers a wrong current_password: 403, since the
// caller is who they are but may not make this change, and not 401, which
// a client would take for the end of its session.
var errWrongCurrentPassword = &keybridge.Error{
	Code: keybridge.EForbidden, Message: "current_password is wrong",
	Fields: map[string]string{"current_password": "is wrong"},
}

// changePassword sets or changes the caller's password. When one is set,
// current_password must be it (checked under the login limits, so this is
// no way around them). With a platform key the key must hold every
// permission: a password opens a session with the full power of the
// user's roles in all their orgs, which a narrower key must not be able to
// buy. Every other session of the user ends; the calling session stays.
func (s *Server) changePassword(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	p := principal(r)
	in, err := decode[changePasswordRequest](w, r)
	if err != nil {
		return err
	}
	keep := ""
	switch p.Type {
	case keybridge.ActorUser:
		keep = p.KeyID // the session's ID
	case keybridge.ActorAPIKey:
		if p.Permissions != keybridge.AllPermissions {
			return keybridge.Errorf(keybridge.EForbidden, "setting a password with an API key needs a key with every permission; or sign in")
		}
	default:
		return keybridge.Errorf(keybridge.EForbidden, "only a user or a platform key may set a password")
	}
	u, err := s.store.User(ctx, p.UserID)
	if err != nil {
		return err
	}
	if u.PasswordHash != "" {
		if in.CurrentPassword == "" {
			return keybridge.FieldError("current_password", "is required: the account has a password")
		}
		info := keybridge.RequestInfoFromContext(ctx)
		if _, err := s.auth.VerifyUserPassword(ctx, u.Email, in.CurrentPassword, info.IP); err != nil {
			if keybridge.IsCode(err, keybridge.EUnauthenticated) {
				return errWrongCurrentPassword
			}
			return err
		}
	}
	hash, err := hashPassword(in.NewPassword)
	if err != nil {
		return err
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		cur, err := tx.User(ctx, u.ID)
		if err != nil {
			return err
		}
		if cur.PasswordHash != u.PasswordHash {
			// Changed since it was checked: the check no longer holds.
			return keybridge.Errorf(keybridge.EConflict, "the password was changed meanwhile: try again")
		}
		old := any(nil)
		if cur.PasswordHash != "" {
			old = keybridge.Redacted
		}
		cur.PasswordHash = hash
		if err := tx.UpdateUser(ctx, cur); err != nil {
			return err
		}
		if _, err := tx.DeleteUserSessions(ctx, cur.ID, keep); err != nil {
			return err
		}
		return audit.RecordUser(ctx, tx, cur, "user.password_change", map[string]keybridge.Change{"password": {Old: old, New: keybridge.Redacted}})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
