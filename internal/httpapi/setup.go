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
	if why := passwordProblem(in.Password); why != "" {
		v.Add("password", why)
	}
	if in.Name != nil {
		n := strings.TrimSpace(*in.Name)
		if n == "" || len(n) > 200 {
			v.Add("name", "must be 1 to 200 characters")
		}
		in.Name = &n
	}
	return v.Err()
}

var errNoInvitation = keybridge.Errorf(keybridge.ENotFound, "invitation not found, already used or expired")

func (s *Server) acceptInvite(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	in, err := decode[acceptInviteRequest](w, r)
	if err != nil {
		return err
	}
	h := sha256.Sum256([]byte(in.Token))
	inv, err := s.store.InvitationByHash(ctx, h[:])
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return errNoInvitation
	}
	if err != nil {
		return err
	}
	if inv.AcceptedAt != nil || !time.Now().Before(inv.ExpiresAt) {
		return errNoInvitation
	}
	hash, err := hashPassword(in.Password)
	if err != nil {
		return err
	}
	var u *keybridge.User
	err = s.store.InTx(ctx, func(tx store.Store) error {
		// Accepting is the single-use gate: of two concurrent accepts,
		// the second finds the invitation taken.
		if err := tx.AcceptInvitation(ctx, inv.ID); err != nil {
			if keybridge.IsCode(err, keybridge.ENotFound) {
				return errNoInvitation
			}
			return err
		}
		// An invitation is for the membership it was issued with: once
		// the member is removed, or removed and added back, it is void.
		// Otherwise whoever kept the link could set the password of a
		// user who has since joined another org.
		m, err := tx.Member(ctx, inv.OrgID, inv.UserID)
		if keybridge.IsCode(err, keybridge.ENotFound) || (err == nil && m.CreatedAt.After(inv.CreatedAt)) {
			return errNoInvitation
		}
		if err != nil {
			return err
		}
		if u, err = tx.User(ctx, inv.UserID); err != nil {
			return err
		}
		changes := map[string]keybridge.Change{"password": {Old: keybridge.Redacted, New: keybridge.Redacted}}
		u.PasswordHash = hash
		if in.Name != nil {
			diff(changes, "name", u.Name, *in.Name)
			u.Name = *in.Name
		}
		if err := tx.UpdateUser(ctx, u); err != nil {
			return err
		}
		actx := keybridge.NewContextWithPrincipal(ctx, &keybridge.Principal{Type: keybridge.ActorUser, UserID: u.ID, Email: u.Email})
		return audit.Record(actx, tx, inv.OrgID, "member.accept_invite", keybridge.Resource{Type: "user", ID: u.ID, Name: u.Email}, changes)
	})
	if err != nil {
		return err
	}
	return s.startSession(w, r, u, nil, http.StatusOK)
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
