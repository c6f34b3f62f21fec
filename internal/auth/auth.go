// Package auth decides who is calling: it verifies platform keys, AI key
// secrets and sessions (from an in-memory cache on the hot path), hashes
// passwords, rate-limits failed logins, batches last_used_at writes and
// checks permissions.
package auth

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// SessionCookie is the name of the web UI's session cookie.
const SessionCookie = "keybridge_session"

// Options configures a Service.
type Options struct {
	Logger *slog.Logger
	// TouchInterval is how often batched last_used_at times are written
	// (default 30 s; SPEC allows up to a minute of lag).
	TouchInterval time.Duration
	// SessionTTL is how long a login lasts (default 12 h).
	SessionTTL time.Duration
}

// Service authenticates and authorizes callers.
type Service struct {
	store store.Store
	opts  Options
}

// New returns a Service over st. Call Run to start its background work.
func New(st store.Store, opts Options) *Service { return &Service{store: st, opts: opts} }

var errStub = errors.New("not implemented")

// Run subscribes to invalidations and flushes last_used_at batches until
// ctx ends, then flushes once more.
func (s *Service) Run(ctx context.Context) error { <-ctx.Done(); return nil }

// Flush writes pending last_used_at times now.
func (s *Service) Flush(ctx context.Context) error { return errStub }

// VerifyAPIKey returns the principal of a platform key, or unauthenticated.
func (s *Service) VerifyAPIKey(ctx context.Context, token string) (*keybridge.Principal, error) {
	return nil, errStub
}

// VerifyAISecret returns the principal of an AI key secret, or unauthenticated.
func (s *Service) VerifyAISecret(ctx context.Context, token string) (*keybridge.Principal, error) {
	return nil, errStub
}

// VerifySession returns the principal of a session cookie value, or unauthenticated.
func (s *Service) VerifySession(ctx context.Context, token string) (*keybridge.Principal, error) {
	return nil, errStub
}

// Authenticate reads the management API's credentials from r: a bearer
// platform key, or the session cookie. It returns unauthenticated when
// there are none or they are not valid.
func (s *Service) Authenticate(r *http.Request) (*keybridge.Principal, error) { return nil, errStub }

// Authorize checks that p may use perm in org: not_found when p cannot see
// the org at all, permission_denied when it can but lacks perm. It returns
// the caller's role in the org.
func (s *Service) Authorize(ctx context.Context, p *keybridge.Principal, org *keybridge.Org, perm keybridge.Permission) (keybridge.Role, error) {
	return "", errStub
}

// Login checks email and password (rate limited per account and per IP),
// creates a session and returns it with its token.
func (s *Service) Login(ctx context.Context, email, password, ip string) (*keybridge.User, *keybridge.Session, string, error) {
	return nil, nil, "", errStub
}

// StartSession creates a session for a user who just proved who they are
// (accept-invite, setup) and returns it with its token.
func (s *Service) StartSession(ctx context.Context, u *keybridge.User, ip, userAgent string) (*keybridge.Session, string, error) {
	return nil, "", errStub
}

// Logout ends the session with this token.
func (s *Service) Logout(ctx context.Context, token string) error { return errStub }

// HashPassword returns the argon2id PHC string of password.
func HashPassword(password string) (string, error) { return "", errStub }

// CheckPassword reports whether password matches the argon2id hash, in
// constant time.
func CheckPassword(hash, password string) bool { return false }
