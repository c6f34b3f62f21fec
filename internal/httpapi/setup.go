package httpapi

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"
	"time"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// setupTokenMeta is the Meta key holding the SHA-256 (hex) of the one-time
// setup token; the token itself is only printed.
const setupTokenMeta = "setup_token_sha256"

// Password length bounds. The upper one keeps a request from making the
// server hash megabytes with argon2id.
const (
	minPassword = 8
	maxPassword = 256
)

// NewSetupToken makes the one-time token of POST /api/v1/setup for an empty
// database and stores its hash, replacing any earlier one. It returns "" and
// no error when the database already has an org: setup is over.
func NewSetupToken(ctx context.Context, st store.Store) (string, error) {
	token := randomToken()
	err := st.InTx(ctx, func(tx store.Store) error {
		n, err := tx.CountOrgs(ctx)
		if err != nil {
			return err
		}
		if n > 0 {
			token = ""
			return tx.DeleteMeta(ctx, setupTokenMeta)
		}
		return tx.SetMeta(ctx, setupTokenMeta, tokenHash(token))
	})
	if err != nil {
		return "", err
	}
	return token, nil
}

// randomToken returns 32 random bytes in hex, for setup and invite tokens.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// SetupInput is what creating an org with its first owner takes.
type SetupInput struct {
	Org   string // slug; also the org's name until renamed
	Email string
	Name  string // defaults to the part of Email before the @
	// Password is optional for the CLI (the owner then works with the
	// printed key); the web setup requires one.
	Password string
	// WithKey also creates an owner API key with every permission.
	WithKey bool
}

// SetupResult is what Setup created. KeyToken is the key's plaintext.
type SetupResult struct {
	Org      *keybridge.Org
	User     *keybridge.User
	Key      *keybridge.APIKey
	KeyToken string
}

// validate normalizes the input and checks it, naming fields as the HTTP
// setup request does.
func (in *SetupInput) validate(requirePassword bool) error {
	in.Email = keybridge.NormalizeEmail(in.Email)
	in.Name = strings.TrimSpace(in.Name)
	v := keybridge.Validation{}
	org := keybridge.Org{Slug: in.Org, Name: in.Org}
	if err := org.Validate(); err != nil {
		v.Add("org", "must match ^[a-z0-9]+(-[a-z0-9]+)*$ and be at most 63 characters")
	}
	if err := keybridge.ValidateEmail(in.Email); err != nil {
		v.Add("email", "must be a valid email address")
	}
	if in.Name == "" {
		in.Name, _, _ = strings.Cut(in.Email, "@")
	}
	if len(in.Name) > 200 {
		v.Add("name", "must be at most 200 characters")
	}
	if in.Password != "" || requirePassword {
		if why := passwordProblem(in.Password); why != "" {
			v.Add("password", why)
		}
	}
	return v.Err()
}

// PasswordProblem says why p cannot be a password, or "" when it can: the
// one rule of setup, accept-invite and the password endpoint, for callers
// that ask for a password before calling Setup (the CLI's prompt).
func PasswordProblem(p string) string { return passwordProblem(p) }

func passwordProblem(p string) string {
	switch {
	case len(p) < minPassword:
		return "must be at least 8 characters"
	case len(p) > maxPassword:
		return "must be at most 256 characters"
	}
	return ""
}

// Setup creates an org, its owner and, when asked, an owner API key with
// every permission, with the "setup" audit event, in one transaction. It
// ends any pending web setup. EConflict when the org or the user exists.
// It is what `keybridge setup` runs.
func Setup(ctx context.Context, st store.Store, in SetupInput) (*SetupResult, error) {
	if err := in.validate(false); err != nil {
		return nil, err
	}
	hash, err := hashPassword(in.Password)
	if err != nil {
		return nil, err
	}
	var res *SetupResult
	err = st.InTx(ctx, func(tx store.Store) error {
		res, err = createOwnerOrg(ctx, tx, in, hash)
		return err
	})
	return res, err
}

// hashPassword hashes outside any transaction: argon2id takes tens of
// milliseconds, which must not be spent holding the database's write lock.
func hashPassword(password string) (string, error) {
	if password == "" {
		return "", nil
	}
	return auth.HashPassword(password)
}

func createOwnerOrg(ctx context.Context, tx store.Store, in SetupInput, passwordHash string) (*SetupResult, error) {
	res := &SetupResult{
		Org:  &keybridge.Org{Slug: in.Org, Name: in.Org},
		User: &keybridge.User{Email: in.Email, Name: in.Name, PasswordHash: passwordHash},
	}
	if err := tx.CreateOrg(ctx, res.Org); err != nil {
		return nil, taken(err, "org", "an org with slug "+in.Org+" already exists")
	}
	if err := tx.CreateUser(ctx, res.User); err != nil {
		return nil, taken(err, "email", "a user with email "+in.Email+" already exists")
	}
	if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: res.Org.ID, UserID: res.User.ID, Role: keybridge.RoleOwner}); err != nil {
		return nil, err
	}
	// The owner made this: record them, not "system", as the actor.
	actx := keybridge.NewContextWithPrincipal(ctx, &keybridge.Principal{Type: keybridge.ActorUser, UserID: res.User.ID, Email: res.User.Email})
	changes := map[string]keybridge.Change{
		"org":   {Old: nil, New: res.Org.Slug},
		"owner": {Old: nil, New: res.User.Email},
	}
	if in.WithKey {
		k, token, err := newAPIKey(ctx, tx, &keybridge.APIKey{
			OrgID: res.Org.ID, UserID: res.User.ID, Name: "owner key (setup)",
			Description: "created by keybridge setup", Permissions: keybridge.AllPermissions,
		})
		if err != nil {
			return nil, err
		}
		res.Key, res.KeyToken = k, token
		changes["api_key"] = keybridge.Change{Old: nil, New: k.ID}
	}
	if err := audit.Record(actx, tx, res.Org.ID, "setup", keybridge.Resource{Type: "org", ID: res.Org.ID, Name: res.Org.Slug}, changes); err != nil {
		return nil, err
	}
	if err := tx.DeleteMeta(ctx, setupTokenMeta); err != nil {
		return nil, err
	}
	return res, nil
}

// newAPIKey generates a platform key for k (org, user, name, permissions,
// limits, expiry set by the caller), stores it active and returns it with
// its plaintext.
func newAPIKey(ctx context.Context, tx store.Store, k *keybridge.APIKey) (*keybridge.APIKey, string, error) {
	token, err := apikey.Generate(apikey.PlatformPrefix)
	if err != nil {
		return nil, "", err
	}
	h := apikey.Hash(token)
	k.ID = ""
	k.Hash, k.Prefix, k.Status = h[:], apikey.Display(token), keybridge.KeyActive
	if err := tx.CreateAPIKey(ctx, k); err != nil {
		return nil, "", err
	}
	return k, token, nil
}

type setupRequest struct {
	Token    string `json:"token"`
	Org      string `json:"org"`
	Email    string `json:"email"`
	Name     string `json:"name"`
	Password string `json:"password"`
}

// loginResponse is the answer of login, setup and accept-invite.
type loginResponse struct {
	User      *keybridge.User `json:"user"`
	CSRFToken string          `json:"csrf_token"`
	// Org is the org setup created; absent for login.
	Org *keybridge.Org `json:"org,omitempty"`
}

// errNoSetup answers every setup attempt once setup is over, and a wrong
// token, alike: nothing tells a guesser whether setup is pending.
var errNoSetup = keybridge.Errorf(keybridge.ENotFound, "no setup is pending, or the setup token is wrong")

func (s *Server) setup(w http.ResponseWriter, r *http.Request) error {
	in, err := decode[setupRequest](w, r)
	if err != nil {
		return err
	}
	// A cheap check first, so the password is hashed only for a request
	// that may succeed; it is checked again in the transaction.
	if err := s.checkSetupToken(r.Context(), s.store, in.Token); err != nil {
		return err
	}
	si := SetupInput{Org: in.Org, Email: in.Email, Name: in.Name, Password: in.Password}
	if err := si.validate(true); err != nil {
		return err
	}
	hash, err := hashPassword(si.Password)
	if err != nil {
		return err
	}
	var res *SetupResult
	err = s.store.InTx(r.Context(), func(tx store.Store) error {
		// Taking the token is the transaction's first write: of two setups
		// racing with the same token, the second waits here and then finds
		// it gone. A failure below rolls the take back.
		want, err := tx.TakeMeta(r.Context(), setupTokenMeta)
		if keybridge.IsCode(err, keybridge.ENotFound) {
			return errNoSetup
		}
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare([]byte(tokenHash(in.Token)), []byte(want)) != 1 {
			return errNoSetup
		}
		if n, err := tx.CountOrgs(r.Context()); err != nil || n > 0 {
			return cmp.Or(err, error(errNoSetup))
		}
		res, err = createOwnerOrg(r.Context(), tx, si, hash)
		return err
	})
	if err != nil {
		return err
	}
	return s.startSession(w, r, res.User, res.Org, http.StatusCreated)
}

// checkSetupToken passes when no org exists yet and token is the pending
// setup token.
func (s *Server) checkSetupToken(ctx context.Context, st store.Store, token string) error {
	want, err := st.GetMeta(ctx, setupTokenMeta)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return errNoSetup
	}
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(tokenHash(token)), []byte(want)) != 1 {
		return errNoSetup
	}
	n, err := st.CountOrgs(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		return errNoSetup
	}
	return nil
}

// startSession logs u in and answers like login.
func (s *Server) startSession(w http.ResponseWriter, r *http.Request, u *keybridge.User, org *keybridge.Org, status int) error {
	info := keybridge.RequestInfoFromContext(r.Context())
	sess, token, err := s.auth.StartSession(r.Context(), u, info.IP, info.UserAgent)
	if err != nil {
		return err
	}
	s.setSessionCookie(w, r, token, sess.ExpiresAt)
	writeOneTime(w, status, loginResponse{User: u, CSRFToken: sess.CSRFToken, Org: org})
	return nil
}

// setSessionCookie sets the web UI's session cookie: HttpOnly so scripts
// cannot read it, SameSite=Lax so other sites cannot send it with unsafe
// requests, and Secure whenever the request came over TLS.
func (s *Server) setSessionCookie(w http.ResponseWriter, r *http.Request, token string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{
		Name: auth.SessionCookie, Value: token, Path: "/",
		Expires: expires, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: s.secureCookies(r),
	})
}

// secureCookies reports whether cookies must be Secure: the request came
// over TLS, or users reach the server by https (TLS ended at a proxy in
// front of it).
func (s *Server) secureCookies(r *http.Request) bool {
	return r.TLS != nil || strings.HasPrefix(s.cfg.PublicURL, "https://")
}

type loginRequest struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) error {
	in, err := decode[loginRequest](w, r)
	if err != nil {
		return err
	}
	v := keybridge.Validation{}
	if in.Email == "" {
		v.Add("email", "is required")
	}
	if in.Password == "" {
		v.Add("password", "is required")
	}
	if err := v.Err(); err != nil {
		return err
	}
	if len(in.Password) > maxPassword {
		// No stored password is this long; do not spend argon2id on it.
		return keybridge.Errorf(keybridge.EUnauthenticated, "wrong email or password")
	}
	info := keybridge.RequestInfoFromContext(r.Context())
	u, sess, token, err := s.auth.Login(r.Context(), keybridge.NormalizeEmail(in.Email), in.Password, info.IP)
	if err != nil {
		return err
	}
	s.setSessionCookie(w, r, token, sess.ExpiresAt)
	writeOneTime(w, http.StatusOK, loginResponse{User: u, CSRFToken: sess.CSRFToken})
	return nil
}

// logout ends the session of the cookie, if any, and clears the cookie. It
// needs no CSRF token: the worst a forged logout does is log a user out.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) error {
	if c, err := r.Cookie(auth.SessionCookie); err == nil && c.Value != "" {
		if err := s.auth.Logout(r.Context(), c.Value); err != nil && !keybridge.IsCode(err, keybridge.ENotFound) &&
			!keybridge.IsCode(err, keybridge.EUnauthenticated) {
			return err
		}
	}
	http.SetCookie(w, &http.Cookie{
		Name: auth.SessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: s.secureCookies(r),
	})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

type acceptInviteRequest struct {
	Token    string  `json:"token"`
	Password string  `json:"password"`
	Name     *string `json:"name"`
}

func (in *acceptInviteRequest) Validate() error {
	v := keybridge.Validation{}
	if in.Token == "" {
		v.Add("token", "is required")
	}
	if len(in.Password) > maxPassword {
		v.Add("password", "must be at most 256 characters")
	}
	if in.Name != nil {
		n, why := userName(*in.Name)
		if why != "" {
			v.Add("name", why)
		}
		in.Name = &n
	}
	return v.Err()
}

// userName trims a user's display name as it is given by the user
// (accepting an invitation, PATCH /users/me) and says what is wrong with
// it ("" when nothing): 1 to 200 characters.
func userName(n string) (string, string) {
	n = strings.TrimSpace(n)
	if n == "" || len(n) > 200 {
		return n, "must be 1 to 200 characters"
	}
	return n, ""
}

var errNoInvitation = keybridge.Errorf(keybridge.ENotFound, "invitation not found, already used or expired")

// acceptInvite turns a pending invitation into a membership, for the user
// of the invitation's address, who proves to be them in one of three ways:
//
//   - signed in (the web session, with its X-CSRF-Token) as the account of
//     that address: no password needed;
//   - not signed in, for an address with no account yet (or an account
//     with neither password nor org, which nobody vouches for): the
//     password given becomes the new account's password;
//   - not signed in, for an account with a password: the password given
//     must be that password (checked under the login limits); an
//     invitation never sets or replaces the password of an account that
//     has one.
//
// An account with API keys but no password sets one first
// (POST /api/v1/users/me/password), then signs in and accepts. The
// membership gets the invitation's role; the invitation is deleted, so the
// token works once.
func (s *Server) acceptInvite(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	in, err := decode[acceptInviteRequest](w, r)
	if err != nil {
		return err
	}
	h := sha256.Sum256([]byte(in.Token))
	inv, err := liveInvitation(ctx, s.store, h[:])
	if err != nil {
		return err
	}
	caller, err := s.sessionCaller(r)
	if err != nil {
		return err
	}
	var u *keybridge.User // the account joining; nil: one to create
	var newHash string    // the password to set, for an account without one
	if caller != nil {
		if keybridge.NormalizeEmail(caller.Email) != inv.Email {
			return keybridge.Errorf(keybridge.EForbidden, "this invitation is for another address: sign out, then accept it")
		}
		if u, err = s.store.User(ctx, caller.UserID); err != nil {
			return err
		}
	} else {
		if u, err = s.store.UserByEmail(ctx, inv.Email); keybridge.IsCode(err, keybridge.ENotFound) {
			u, err = nil, nil
		}
		if err != nil {
			return err
		}
		open, err := unclaimed(ctx, s.store, u)
		if err != nil {
			return err
		}
		switch {
		case open:
			if why := passwordProblem(in.Password); why != "" {
				return keybridge.FieldError("password", why)
			}
			if newHash, err = hashPassword(in.Password); err != nil {
				return err
			}
		case u.PasswordHash == "":
			return keybridge.Errorf(keybridge.EForbidden,
				"the account of this address has no password: set one with POST /api/v1/users/me/password (with one of its API keys), sign in, then accept the invitation")
		case in.Password == "":
			return keybridge.FieldError("password", "is required: the current password of the account of this address (or sign in first)")
		default:
			info := keybridge.RequestInfoFromContext(ctx)
			if u, err = s.auth.VerifyUserPassword(ctx, inv.Email, in.Password, info.IP); err != nil {
				return err
			}
		}
	}
	err = s.store.InTx(ctx, func(tx store.Store) error {
		// Deleting the invitation is the single-use gate: of two
		// concurrent accepts, the second finds it gone. It is read again
		// first: a re-invitation may have replaced the token meanwhile.
		cur, err := liveInvitation(ctx, tx, h[:])
		if err != nil {
			return err
		}
		if cur.ID != inv.ID {
			return errNoInvitation
		}
		if err := tx.DeleteInvitation(ctx, cur.OrgID, cur.ID); err != nil {
			if keybridge.IsCode(err, keybridge.ENotFound) {
				return errNoInvitation
			}
			return err
		}
		changes := map[string]keybridge.Change{"role": {Old: nil, New: cur.Role}}
		if u, err = joiningUser(ctx, tx, cur, u, newHash, in.Name, changes); err != nil {
			return err
		}
		if err := tx.CreateMembership(ctx, &keybridge.Membership{OrgID: cur.OrgID, UserID: u.ID, Role: cur.Role}); err != nil {
			if keybridge.IsCode(err, keybridge.EConflict) {
				return keybridge.Errorf(keybridge.EConflict, "already a member of this org")
			}
			return err
		}
		actx := keybridge.NewContextWithPrincipal(ctx, &keybridge.Principal{Type: keybridge.ActorUser, UserID: u.ID, Email: u.Email})
		return audit.Record(actx, tx, cur.OrgID, "member.accept_invite", keybridge.Resource{Type: "user", ID: u.ID, Name: u.Email}, changes)
	})
	if err != nil {
		return err
	}
	if caller != nil {
		// Already signed in: the session goes on, with its CSRF token.
		writeOneTime(w, http.StatusOK, loginResponse{User: u, CSRFToken: caller.SessionCSRF})
		return nil
	}
	return s.startSession(w, r, u, nil, http.StatusOK)
}

// liveInvitation finds the pending, unexpired invitation of a token's hash
// whose inviter may still grant its role. The role stands on the authority
// of whoever last set it (invited, re-invited or changed it while
// pending): once they are demoted below it or out of the org, the
// invitation is void, and answers like an unknown token, until someone who
// may grant the role invites the address again. An invitation that names
// no inviter (carried over from a release that did not record one) is
// void too. Being read in the accepting transaction, the check holds on
// every replica: the membership it reads is the database's.
func liveInvitation(ctx context.Context, st store.Store, hash []byte) (*keybridge.Invitation, error) {
	inv, err := st.InvitationByHash(ctx, hash)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, errNoInvitation
	}
	if err != nil {
		return nil, err
	}
	if !time.Now().Before(inv.ExpiresAt) {
		return nil, errNoInvitation
	}
	inviter, err := st.Membership(ctx, inv.OrgID, inv.InvitedBy)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, errNoInvitation
	}
	if err != nil {
		return nil, err
	}
	if !inviter.Role.MayGrant(inv.Role) {
		return nil, errNoInvitation
	}
	return inv, nil
}

// unclaimed reports whether an invitation may set the password of u: there
// is no account (nil), or one with neither a password nor an org, which
// nobody vouches for. Otherwise an admin of one org could take over an
// account that belongs to another.
func unclaimed(ctx context.Context, st store.Store, u *keybridge.User) (bool, error) {
	if u == nil {
		return true, nil
	}
	if u.PasswordHash != "" {
		return false, nil
	}
	oms, err := st.OrgsForUser(ctx, u.ID)
	return err == nil && len(oms) == 0, err
}

// joiningUser creates or updates, inside the accepting transaction, the
// account that joins: a new one takes the invitation's ID (the member ID
// the inviter saw), the name given or the inviter's, and the password.
func joiningUser(ctx context.Context, tx store.Store, inv *keybridge.Invitation, u *keybridge.User, newHash string, name *string,
	changes map[string]keybridge.Change) (*keybridge.User, error) {
	if u == nil {
		nu := &keybridge.User{ID: inv.ID, Email: inv.Email, Name: cmp.Or(deref(name), inv.Name), PasswordHash: newHash}
		if err := tx.CreateUser(ctx, nu); err != nil {
			if keybridge.IsCode(err, keybridge.EConflict) {
				return nil, keybridge.Errorf(keybridge.EConflict, "an account with this address was created meanwhile: try again")
			}
			return nil, err
		}
		changes["password"] = keybridge.Change{Old: nil, New: keybridge.Redacted}
		return nu, nil
	}
	cur, err := tx.User(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	if newHash != "" {
		// Checked again here: a password set since the check above must
		// not be replaced.
		if cur.PasswordHash != "" {
			return nil, keybridge.Errorf(keybridge.EConflict, "the account's password was set meanwhile: sign in, then accept")
		}
		cur.PasswordHash = newHash
		changes["password"] = keybridge.Change{Old: nil, New: keybridge.Redacted}
	}
	if name != nil {
		diff(changes, "name", cur.Name, *name)
		cur.Name = *name
	}
	if newHash != "" || name != nil {
		if err := tx.UpdateUser(ctx, cur); err != nil {
			return nil, err
		}
	}
	return cur, nil
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

// sessionCaller returns the principal of a valid session cookie on r, or
// nil when there is none (an expired or unknown one counts as none: a stale
// cookie must not stand in the way). A session counts only with its
// X-CSRF-Token, as on every unsafe route: a forged cross-site request
// cannot make a signed-in user join an org.
func (s *Server) sessionCaller(r *http.Request) (*keybridge.Principal, error) {
	c, err := r.Cookie(auth.SessionCookie)
	if err != nil || c.Value == "" {
		return nil, nil
	}
	p, err := s.auth.VerifySession(r.Context(), c.Value)
	if keybridge.IsCode(err, keybridge.EUnauthenticated) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !csrfOK(r, p) {
		// Without its CSRF token the session vouches for nothing: the
		// request is taken as not signed in, and must bring a password.
		return nil, nil
	}
	return p, nil
}

// meOrg is one of the caller's orgs with its role and what the caller may
// do there (for a key: the role's permissions cut down to the key's).
type meOrg struct {
	ID          string                `json:"id"`
	Slug        string                `json:"slug"`
	Name        string                `json:"name"`
	Role        keybridge.Role        `json:"role"`
	Permissions keybridge.Permissions `json:"permissions"`
}

// meKey describes the platform key a request authenticated with.
type meKey struct {
	ID    string `json:"id"`
	OrgID string `json:"org_id"`
	// Permissions are the key's own permissions.
	Permissions keybridge.Permissions `json:"permissions"`
	// EffectivePermissions are those cut down to the owner's current role.
	EffectivePermissions keybridge.Permissions `json:"effective_permissions"`
}

type meResponse struct {
	User   *keybridge.User `json:"user"`
	Orgs   []meOrg         `json:"orgs"`
	APIKey *meKey          `json:"api_key,omitempty"`
}

func (s *Server) me(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	u, err := s.store.User(r.Context(), p.UserID)
	if err != nil {
		return err
	}
	oms, err := s.store.OrgsForUser(r.Context(), p.UserID)
	if err != nil {
		return err
	}
	out := meResponse{User: u, Orgs: []meOrg{}}
	if p.Type == keybridge.ActorAPIKey {
		k, err := s.store.APIKey(r.Context(), p.KeyID)
		if err != nil {
			return err
		}
		// p.Permissions are already cut down to the owner's role.
		out.APIKey = &meKey{ID: k.ID, OrgID: k.OrgID, Permissions: k.Permissions, EffectivePermissions: p.Permissions}
	}
	for _, om := range oms {
		perms := om.Role.Permissions()
		if p.Type == keybridge.ActorAPIKey {
			// A key is bound to its org: it sees no other.
			if om.Org.ID != p.OrgID {
				continue
			}
			perms &= p.Permissions
		}
		out.Orgs = append(out.Orgs, meOrg{ID: om.Org.ID, Slug: om.Org.Slug, Name: om.Org.Name, Role: om.Role, Permissions: perms})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
