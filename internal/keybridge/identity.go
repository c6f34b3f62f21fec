package keybridge

import (
	"net/mail"
	"regexp"
	"strings"
	"time"
)

// SlugPattern is the shape of org slugs and provider names.
var SlugPattern = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

var idShape = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// LooksLikeID reports whether s has the shape of an ID. Org slugs and
// provider names may not: paths take an ID or a name in one place, the ID
// wins, and such a name could never be reached.
func LooksLikeID(s string) bool { return idShape.MatchString(s) }

// Org is an organisation: it owns providers, projects, members, audit
// events and usage.
type Org struct {
	ID        string    `json:"id"`
	Slug      string    `json:"slug"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Validate checks the slug and name.
func (o *Org) Validate() error {
	v := Validation{}
	if !SlugPattern.MatchString(o.Slug) || len(o.Slug) > 63 {
		v.Add("slug", "must match ^[a-z0-9]+(-[a-z0-9]+)*$ and be at most 63 characters")
	}
	if LooksLikeID(o.Slug) {
		v.Add("slug", "must not look like an ID")
	}
	if strings.TrimSpace(o.Name) == "" || len(o.Name) > 200 {
		v.Add("name", "must be 1 to 200 characters")
	}
	return v.Err()
}

// User is a person. PasswordHash is an argon2id PHC string, empty when the
// user has no password (yet).
type User struct {
	ID           string    `json:"id"`
	Email        string    `json:"email"`
	Name         string    `json:"name"`
	PasswordHash string    `json:"-"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

// NormalizeEmail lowercases and trims an address, the form users are
// stored and looked up by.
func NormalizeEmail(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// ValidateEmail checks that s is a bare address.
func ValidateEmail(s string) error {
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || len(s) > 254 {
		return FieldError("email", "must be a valid email address")
	}
	return nil
}

// Membership places a user in an org with a role.
type Membership struct {
	OrgID     string    `json:"org_id"`
	UserID    string    `json:"user_id"`
	Role      Role      `json:"role"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Member is a membership joined with its user, as the member list shows it,
// or a pending invitation. A pending one has the invitation's ID as UserID,
// the address and name the inviter gave, and grants nothing until the user
// accepts it: nothing in it tells whether the address has an account.
type Member struct {
	Membership
	Email string `json:"email"`
	Name  string `json:"name"`
	// Invited is true for an invitation not accepted yet.
	Invited bool `json:"invited"`
	// InviteExpiresAt is when a pending invitation stops working (it
	// stays listed, for the inviter to renew or withdraw).
	InviteExpiresAt *time.Time `json:"invite_expires_at,omitempty"`
	// Credentials names, per provider ID, whether the member has a personal
	// credential for it (SPEC §6); filled by the API layer, for admins only.
	Credentials map[string]bool `json:"credentials,omitempty"`
}

// Invitation is a pending membership of whoever holds the address: the
// role and name the inviter gave, and the SHA-256 of its token (the token
// itself is only ever in the inviter's answer). It references no user: the
// user, new or existing, is found by address when accepting.
type Invitation struct {
	ID        string
	OrgID     string
	Email     string
	Name      string
	Role      Role
	TokenHash []byte
	// InvitedBy is the ID of the user who invited, for the audit trail.
	InvitedBy string
	ExpiresAt time.Time
	CreatedAt time.Time
	UpdatedAt time.Time
}

// Member is how the member list shows inv.
func (inv *Invitation) Member() Member {
	return Member{
		Membership: Membership{OrgID: inv.OrgID, UserID: inv.ID, Role: inv.Role, CreatedAt: inv.CreatedAt, UpdatedAt: inv.UpdatedAt},
		Email:      inv.Email, Name: inv.Name, Invited: true, InviteExpiresAt: &inv.ExpiresAt,
	}
}

// InvitationTTL is how long an invitation stays valid.
const InvitationTTL = 7 * 24 * time.Hour

// Session is a web UI login. Only the SHA-256 of its token is stored.
// CSRFToken is never stored: it is derived from the session's token (see
// auth), and set only on a session just created or verified.
type Session struct {
	ID        string
	UserID    string
	TokenHash []byte
	CSRFToken string
	ExpiresAt time.Time
	CreatedAt time.Time
	IP        string
	UserAgent string
}
