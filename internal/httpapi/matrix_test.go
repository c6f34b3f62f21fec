package httpapi_test

// The authorization matrix: every route of httpapi.Routes() and the
// gateway's, called by every kind of caller on every kind of object, each
// answer compared with the status SPEC §1–§3 (and §5, §7.1 and §7.2 for
// the gateway) gives, as the rule function expect below spells it out.
// The expected statuses are computed from the rules, never recorded from
// the server.
//
// Callers (matrixCallers): no credential, a malformed one, a key with a
// tampered checksum, an unknown key, suspended, revoked, expired and
// rotated-out keys, a removed member's key, member, admin and owner keys,
// a demoted admin's key, a key lacking the permission (an owner's
// read-only key), another org's owner and member, AI key secrets of every
// ai_type and ids (also a deleted one), an AWS AI key as a bearer and
// signing with SigV4 (also badly), a platform key and an AI key with a
// model allowlist, sessions with the CSRF token, without it and with
// another session's.
//
// Objects: the caller's own org's, another org's addressed through the
// caller's org (an id from elsewhere), another org's through its own path,
// and an object of another parent (an upstream key of another provider, an
// AI key of another project, another user's key or credential). On the
// gateway: openai, anthropic, google, bedrock, azure-openai,
// openai-compatible and key_source user providers of the caller's org,
// another org's, a disabled and an unknown one, each called in its own
// dialect against a loopback mock, and a WebSocket upgrade of the
// Responses API on the OpenAI-style ones. Each gateway cell's request
// carries a marker the gateway forwards; at the end, no refused cell's
// marker may have reached a mock, and each allowed one must have reached
// its own provider's mock once.
//
// Cells whose allowed answer changes or consumes their object (deletes,
// status changes, one-per-user credentials) get a fresh object; everything
// else shares one fixture, built once per engine.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/gateway"
	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/providertest"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// credKind is how a caller presents itself.
type credKind int

const (
	credNone      credKind = iota
	credMalformed          // "Bearer not-a-key"
	credTampered           // a real key with its checksum changed
	credUnknown            // well-formed, correct checksum, never issued
	credKey                // a platform key (status below)
	credSession            // the web UI's cookie
	credAISecret           // an AI key's kbs_ secret
	credAIKeyID            // an AI key's public kbk_ id
	credSigV4              // an AWS AI key signing with SigV4 (SPEC §7.2)
)

// callerSpec describes a caller; instantiate makes one in an org.
type callerSpec struct {
	name string
	kind credKind
	// otherOrg: the caller belongs to org B, not to org A where every
	// other caller is.
	otherOrg bool
	role     keybridge.Role
	// perms are the key's own permissions (0: its role's).
	perms keybridge.Permissions
	// status of a platform key: "" (active), suspended, revoked, expired,
	// rotated (its rotation grace period is over).
	status string
	// csrf: a session sends its X-CSRF-Token on unsafe methods.
	csrf bool
	// deleted: an AI key that was deleted.
	deleted bool
	// removed: the key's user was removed from the org after it was made;
	// demoted: the user was an admin when the key was made, and role is
	// what they are now.
	removed, demoted bool
	// aiType of an AI key (default OPENAI).
	aiType keybridge.AIType
	// badSignature: a SigV4 caller signs with a wrong secret; wrongCSRF: a
	// session sends another session's token.
	badSignature, wrongCSRF bool
	// allowlist: the key (a platform key or an AI key) has
	// matrixAllowlist as its allowed_models (SPEC §7.2).
	allowlist bool
}

func (c *callerSpec) ai() keybridge.AIType {
	if c.aiType == "" {
		return keybridge.AIOpenAI
	}
	return c.aiType
}

// valid reports whether the caller authenticates on the management API.
func (c *callerSpec) valid() bool {
	return c.activeKey() || c.kind == credSession
}

// activeKey reports whether the caller is a platform key that works.
func (c *callerSpec) activeKey() bool {
	return c.kind == credKey && c.status == "" && !c.removed
}

// effective is what the caller may do in its org (SPEC §2: the role's
// permissions ∩ the key's; a session has all of its role's).
func (c *callerSpec) effective() keybridge.Permissions {
	role := c.role.Permissions()
	if c.kind == credKey && c.perms != 0 {
		return role & c.perms
	}
	return role
}

func (c *callerSpec) org() string {
	if c.otherOrg {
		return "B"
	}
	return "A"
}

const readOnly = keybridge.PermProvidersRead | keybridge.PermProjectsRead

var matrixCallers = []callerSpec{
	{name: "none", kind: credNone},
	{name: "malformed", kind: credMalformed},
	{name: "tampered-checksum", kind: credTampered, role: keybridge.RoleOwner},
	{name: "unknown-key", kind: credUnknown},
	{name: "suspended-key", kind: credKey, role: keybridge.RoleOwner, status: "suspended"},
	{name: "revoked-key", kind: credKey, role: keybridge.RoleOwner, status: "revoked"},
	{name: "expired-key", kind: credKey, role: keybridge.RoleOwner, status: "expired"},
	{name: "rotated-out-key", kind: credKey, role: keybridge.RoleOwner, status: "rotated"},
	{name: "removed-member-key", kind: credKey, role: keybridge.RoleMember, removed: true},
	{name: "member-key", kind: credKey, role: keybridge.RoleMember},
	// Keys with a model allowlist: on the management API a member's key
	// like any other; on the gateway limited to matrixAllowlist.
	{name: "allowlisted-member-key", kind: credKey, role: keybridge.RoleMember, allowlist: true},
	// An admin's key, made with every permission, after the admin was
	// made a member: the key holds only what the role now grants.
	{name: "demoted-admin-key", kind: credKey, role: keybridge.RoleMember, perms: keybridge.AllPermissions, demoted: true},
	{name: "admin-key", kind: credKey, role: keybridge.RoleAdmin},
	{name: "owner-key", kind: credKey, role: keybridge.RoleOwner},
	{name: "read-only-key", kind: credKey, role: keybridge.RoleOwner, perms: readOnly},
	{name: "other-org-owner-key", kind: credKey, role: keybridge.RoleOwner, otherOrg: true},
	{name: "ai-secret", kind: credAISecret},
	{name: "allowlisted-ai-secret", kind: credAISecret, allowlist: true},
	{name: "ai-key-id", kind: credAIKeyID},
	{name: "deleted-ai-secret", kind: credAISecret, deleted: true},
	{name: "anthropic-ai-secret", kind: credAISecret, aiType: keybridge.AIAnthropic},
	{name: "google-ai-secret", kind: credAISecret, aiType: keybridge.AIGoogle},
	{name: "other-ai-secret", kind: credAISecret, aiType: keybridge.AIOther},
	{name: "aws-ai-secret", kind: credAISecret, aiType: keybridge.AIAWS},
	{name: "aws-ai-sigv4", kind: credSigV4, aiType: keybridge.AIAWS},
	{name: "aws-ai-sigv4-bad-signature", kind: credSigV4, aiType: keybridge.AIAWS, badSignature: true},
	{name: "owner-session-no-csrf", kind: credSession, role: keybridge.RoleOwner},
	{name: "owner-session-wrong-csrf", kind: credSession, role: keybridge.RoleOwner, csrf: true, wrongCSRF: true},
	{name: "owner-session", kind: credSession, role: keybridge.RoleOwner, csrf: true},
	{name: "member-session", kind: credSession, role: keybridge.RoleMember, csrf: true},
	{name: "other-org-member-session", kind: credSession, role: keybridge.RoleMember, csrf: true, otherOrg: true},
}

// objKind is what a cell's request is about.
type objKind int

const (
	objOwn         objKind = iota // org A's (for per-user objects: the caller's own)
	objForeignID                  // org B's object through org A's path (or, per-user: a user of org B's)
	objForeignOrg                 // org B's object through org B's path
	objOtherParent                // in org A under another parent (per-user: another user's)
	gwOpenAI                      // gateway: org A's enabled openai provider
	gwAnthropic                   // gateway: org A's enabled anthropic provider
	gwGoogle                      // gateway: org A's google provider, the key in ?key= (POST) or x-goog-api-key (GET)
	gwUserSource                  // gateway: org A's provider with key_source user, where no caller has a personal key
	gwBedrock                     // gateway: org A's bedrock provider (POST only: the runtime has no GET)
	gwAzure                       // gateway: org A's azure-openai provider, the key in api-key
	gwCompat                      // gateway: org A's openai-compatible provider
	gwForeign                     // gateway: a provider only org B has
	gwDisabled                    // gateway: org A's disabled provider
	gwUnknown                     // gateway: a name no org has
)

var objNames = map[objKind]string{
	objOwn: "own", objForeignID: "other-org-id", objForeignOrg: "other-org", objOtherParent: "other-parent",
	gwOpenAI: "openai", gwAnthropic: "anthropic", gwGoogle: "google", gwUserSource: "user-key-source", gwBedrock: "bedrock", gwAzure: "azure-openai", gwCompat: "openai-compatible", gwForeign: "other-org-provider", gwDisabled: "disabled-provider",
	gwUnknown: "unknown-provider",
}

// scope is which rule set a route follows.
type scope int

const (
	scopePublic     scope = iota // no authentication: one status for every caller
	scopeUser                    // any authenticated caller, no object
	scopeOrg                     // an {org} (in the path or the body) and maybe objects in it
	scopeAPIKey                  // /api-keys/{id}: a user's key (SPEC §3)
	scopeCredential              // /users/me/credentials/{id} (SPEC §6)
	scopeGateway                 // /gateway/{provider}/... (SPEC §7.2)
)

// matrixRow is one route's rows: its rule inputs, objects and requests.
type matrixRow struct {
	route string
	// variant names a second row of a route, e.g. (grant owner).
	variant string
	scope   scope
	// ok is the allowed answer (scopePublic: every caller's).
	ok int
	// see is the permission to see the org's collection (403 without it,
	// before any object is looked up); object says the path names an
	// object in it (404 when it is another org's); sub is the permission
	// to see the object's sub-resource (403 without it) and, with an
	// object of another parent, 404 after it; perm is what the action
	// needs (403); owner: only owners may.
	see, sub, perm keybridge.Permission
	object         bool
	owner          bool
	// keyWrite: a request made with a key needs api_keys:write (sessions
	// do not); allKeys: with a key, only one holding every permission.
	keyWrite, allKeys bool
	// grants: the permissions a new key asks for, which the caller must
	// hold (403: SPEC §3).
	grants keybridge.Permissions
	// action, for scopeAPIKey: what is done to the key.
	action  string
	objects []objKind
	// fresh: an allowed cell changes or uses up its object, so it gets a
	// new one; freshOrg: a new org too, the caller made again in it;
	// freshSession: session callers get a new session (logout ends it).
	fresh, freshOrg, freshSession bool
	build                         func(f *mfix, c *mcell) mreq
	// targetRole: the member a members row acts on has this role (default
	// member); shared targets of other roles are made once per org.
	targetRole keybridge.Role
	// invitation: a members row acts on a pending invitation.
	invitation bool
	// inspect, when set, checks an allowed answer's body for what the
	// caller must not see, and says what is wrong ("" when nothing).
	inspect func(c *mcell, body []byte) string
	// socket: a gateway row whose requests are WebSocket upgrades.
	socket bool
}

// mreq is one cell's request, beside the caller's credential.
type mreq struct {
	path   string
	body   any
	header map[string]string
	// gwKeyHeader: the gateway request carries its key in this header
	// (else Authorization: Bearer).
	gwKeyHeader string
	// gwKeyQuery: the gateway request carries its key as ?key= (Gemini's
	// REST style).
	gwKeyQuery bool
}

// matrixException is a cell known to differ from the spec because its
// fix belongs to other work: it answers got until then, or, with content,
// the right status with a body its row's inspect refuses.
type matrixException struct {
	got     int
	content bool
	reason  string
}

// matrixExceptions are keyed "ROUTE|caller|object". An exception whose
// cell answers what the spec says fails the test, so it is removed once
// the fix lands.
var matrixExceptions = map[string]matrixException{
	// None today. An entry looks like
	//	"GET /api/v1/orgs/{org}/members|member-key|own": {got: 200, content: true,
	//		reason: "members see other members' personal-credential flags"},
}

var (
	orgAB     = []objKind{objOwn, objForeignOrg}
	objects3  = []objKind{objOwn, objForeignID, objForeignOrg}
	objects4  = []objKind{objOwn, objForeignID, objForeignOrg, objOtherParent}
	userObjs  = []objKind{objOwn, objForeignID, objOtherParent}
	noObject  = []objKind{objOwn}
	gwObjects = []objKind{gwOpenAI, gwAnthropic, gwGoogle, gwAzure, gwCompat, gwUserSource, gwForeign, gwDisabled, gwUnknown}
	gwPOST    = append([]objKind{gwBedrock}, gwObjects...)
	// gwSocket: the providers whose APIs have the Responses API over
	// WebSocket (OpenAI's, and Azure's and compatible ones' alike), and
	// those an upgrade must not reach.
	gwSocket = []objKind{gwOpenAI, gwAzure, gwCompat, gwUserSource, gwForeign, gwDisabled, gwUnknown}
)

const (
	pRead  = keybridge.PermProvidersRead
	pWrite = keybridge.PermProvidersWrite
	jRead  = keybridge.PermProjectsRead
	jWrite = keybridge.PermProjectsWrite
	mRead  = keybridge.PermMembersRead
	mWrite = keybridge.PermMembersWrite
)

// matrixRows returns every route's rows. Routes without rows, and rows of
// routes that do not exist, fail the test.
func matrixRows() []matrixRow {
	path := func(p string) func(*mfix, *mcell) mreq {
		return func(*mfix, *mcell) mreq { return mreq{path: p} }
	}
	orgPath := func(suffix string) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq { return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + suffix} }
	}
	orgBody := func(suffix string, body func(f *mfix, c *mcell) any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + suffix, body: body(f, c)}
		}
	}
	provider := func(suffix string, body any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + "/providers/" + f.providerFor(c) + suffix, body: body}
		}
	}
	providerKey := func(body any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			prov, key := f.providerKeyFor(c)
			return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + "/providers/" + prov + "/keys/" + key, body: body}
		}
	}
	project := func(suffix string, body any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + "/projects/" + f.projectFor(c) + suffix, body: body}
		}
	}
	aiKey := func(body any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			proj, key := f.aiKeyFor(c)
			return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + "/projects/" + proj + "/ai-keys/" + key, body: body}
		}
	}
	member := func(body any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + "/members/" + f.memberFor(c), body: body}
		}
	}
	apiKey := func(suffix string, body any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/api-keys/" + f.apiKeyFor(c) + suffix, body: body}
		}
	}
	credential := func(body func(*mfix) any) func(*mfix, *mcell) mreq {
		return func(f *mfix, c *mcell) mreq {
			var b any
			if body != nil {
				b = body(f)
			}
			return mreq{path: "/api/v1/users/me/credentials/" + f.credentialFor(c), body: b}
		}
	}
	pub := func(route string, status int, build func(*mfix, *mcell) mreq) matrixRow {
		return matrixRow{route: route, scope: scopePublic, ok: status, objects: noObject, build: build}
	}
	user := func(route string, status int, build func(*mfix, *mcell) mreq) matrixRow {
		return matrixRow{route: route, scope: scopeUser, ok: status, objects: noObject, build: build}
	}
	key := func(route, action string, status int, build func(*mfix, *mcell) mreq) matrixRow {
		return matrixRow{route: route, scope: scopeAPIKey, action: action, ok: status, objects: userObjs,
			fresh: action != "get", build: build}
	}
	rows := []matrixRow{
		// Operations and sessions: no authentication (SPEC §2, §3, §10).
		pub("GET /healthz", 200, path("/healthz")),
		pub("GET /readyz", 200, path("/readyz")),
		pub("GET /metrics", 200, path("/metrics")),
		pub("GET /api/v1/openapi.json", 200, path("/api/v1/openapi.json")),
		// Setup is done: it answers 404, whoever asks.
		pub("POST /api/v1/setup", 404, func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/setup", body: map[string]string{"token": "not-a-setup-token", "org": "x" + f.uniq(),
				"email": "setup-" + f.uniq() + "@x.test", "name": "X", "password": memberPassword}}
		}),
		// Each cell signs in a user of its own: attempts on one account
		// in flight at once count against its failure limit until they
		// succeed, and the cells run in parallel.
		pub("POST /api/v1/auth/login", 200, func(f *mfix, c *mcell) mreq {
			email := f.newUser(f.orgs["A"], keybridge.RoleMember).Email
			return mreq{path: "/api/v1/auth/login", body: map[string]string{"email": email, "password": memberPassword}}
		}),
		{route: "POST /api/v1/auth/logout", scope: scopePublic, ok: 204, objects: noObject, freshSession: true,
			build: path("/api/v1/auth/logout")},
		pub("POST /api/v1/auth/accept-invite", 404, func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/auth/accept-invite", body: map[string]string{"token": "not-an-invitation", "password": memberPassword}}
		}),
		pub("POST /api/v1/leaked-keys", 200, func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/leaked-keys", body: []map[string]string{{"token": f.unknownKey, "type": "keybridge",
				"url": "https://example.test/leak", "source": "content"}}}
		}),

		// The caller itself (SPEC §2, §3, §6).
		user("GET /api/v1/users/me", 200, path("/api/v1/users/me")),
		// A name opens nothing: any caller, any key, changes its own
		// (an extension of SPEC §2; docs).
		user("PATCH /api/v1/users/me", 200, func(f *mfix, c *mcell) mreq {
			return mreq{path: "/api/v1/users/me", body: map[string]string{"name": "Renamed " + f.uniq()}}
		}),
		user("GET /api/v1/orgs", 200, path("/api/v1/orgs")),
		{route: "POST /api/v1/orgs", scope: scopeUser, ok: 201, objects: noObject, allKeys: true,
			build: func(f *mfix, c *mcell) mreq {
				return mreq{path: "/api/v1/orgs", body: map[string]string{"slug": "made-" + f.uniq(), "name": "Made"}}
			}},
		user("GET /api/v1/api-keys", 200, path("/api/v1/api-keys")),
		user("GET /api/v1/users/me/credentials", 200, path("/api/v1/users/me/credentials")),
		// A password opens a session with the user's whole power: with a
		// key, only one holding every permission sets it (SPEC §2; docs).
		{route: "POST /api/v1/users/me/password", scope: scopeUser, ok: 204, objects: noObject, allKeys: true,
			build: func(f *mfix, c *mcell) mreq {
				return mreq{path: "/api/v1/users/me/password", body: map[string]string{"current_password": memberPassword,
					"new_password": "new-password-" + f.uniq()}}
			}},

		// Orgs and members (SPEC §2).
		{route: "GET /api/v1/orgs/{org}", scope: scopeOrg, ok: 200, objects: orgAB, build: orgPath("")},
		{route: "PATCH /api/v1/orgs/{org}", scope: scopeOrg, ok: 200, perm: mWrite, objects: orgAB,
			build: orgBody("", func(f *mfix, c *mcell) any { return map[string]string{"name": "Renamed"} })},
		{route: "DELETE /api/v1/orgs/{org}", scope: scopeOrg, ok: 204, perm: mWrite, owner: true, objects: orgAB,
			freshOrg: true, build: orgPath("")},
		{route: "GET /api/v1/orgs/{org}/members", scope: scopeOrg, ok: 200, see: mRead, objects: orgAB, build: orgPath("/members"),
			inspect: membersCredentialFlags},
		{route: "POST /api/v1/orgs/{org}/members", scope: scopeOrg, ok: 201, see: mRead, perm: mWrite, objects: orgAB,
			build: orgBody("/members", func(f *mfix, c *mcell) any {
				return map[string]string{"email": "invited-" + f.uniq() + "@x.test", "name": "Invited", "role": "member"}
			})},
		{route: "PATCH /api/v1/orgs/{org}/members/{userID}", scope: scopeOrg, ok: 200, see: mRead, object: true, perm: mWrite,
			objects: objects3, fresh: true, build: member(map[string]string{"role": "admin"})},
		{route: "DELETE /api/v1/orgs/{org}/members/{userID}", scope: scopeOrg, ok: 204, see: mRead, object: true, perm: mWrite,
			objects: objects3, fresh: true, build: member(nil)},
		// Granting, changing or removing owner needs an owner (SPEC §2).
		{route: "POST /api/v1/orgs/{org}/members", variant: "grant owner", scope: scopeOrg, ok: 201, see: mRead, perm: mWrite,
			owner: true, objects: orgAB, build: orgBody("/members", func(f *mfix, c *mcell) any {
				return map[string]string{"email": "invited-" + f.uniq() + "@x.test", "name": "Invited", "role": "owner"}
			})},
		{route: "PATCH /api/v1/orgs/{org}/members/{userID}", variant: "grant owner", scope: scopeOrg, ok: 200, see: mRead, object: true,
			perm: mWrite, owner: true, objects: objects3, fresh: true, build: member(map[string]string{"role": "owner"})},
		{route: "PATCH /api/v1/orgs/{org}/members/{userID}", variant: "demote an owner", scope: scopeOrg, ok: 200, see: mRead,
			object: true, perm: mWrite, owner: true, objects: objects3, fresh: true, targetRole: keybridge.RoleOwner,
			build: member(map[string]string{"role": "admin"})},
		{route: "PATCH /api/v1/orgs/{org}/members/{userID}", variant: "pending invitation", scope: scopeOrg, ok: 200, see: mRead,
			object: true, perm: mWrite, objects: objects3, fresh: true, invitation: true, build: member(map[string]string{"role": "admin"})},
		{route: "DELETE /api/v1/orgs/{org}/members/{userID}", variant: "pending invitation", scope: scopeOrg, ok: 204, see: mRead,
			object: true, perm: mWrite, objects: objects3, fresh: true, invitation: true, build: member(nil)},
		{route: "DELETE /api/v1/orgs/{org}/members/{userID}", variant: "remove an owner", scope: scopeOrg, ok: 204, see: mRead,
			object: true, perm: mWrite, owner: true, objects: objects3, fresh: true, targetRole: keybridge.RoleOwner, build: member(nil)},

		// Platform API keys (SPEC §3).
		{route: "POST /api/v1/api-keys", scope: scopeOrg, ok: 201, keyWrite: true, objects: orgAB,
			build: func(f *mfix, c *mcell) mreq {
				return mreq{path: "/api/v1/api-keys", body: map[string]any{"org": c.pathOrg(f), "name": "made",
					"permissions": []string{"gateway:invoke"}}}
			}},
		{route: "POST /api/v1/api-keys", variant: "every permission", scope: scopeOrg, ok: 201, keyWrite: true,
			grants: keybridge.AllPermissions, objects: orgAB, build: func(f *mfix, c *mcell) mreq {
				return mreq{path: "/api/v1/api-keys", body: map[string]any{"org": c.pathOrg(f), "name": "made",
					"permissions": keybridge.AllPermissions.Names()}}
			}},
		key("GET /api/v1/api-keys/{id}", "get", 200, apiKey("", nil)),
		key("PATCH /api/v1/api-keys/{id}", "change", 200, apiKey("", map[string]string{"name": "renamed"})),
		key("DELETE /api/v1/api-keys/{id}", "revoke", 204, apiKey("", nil)),
		key("POST /api/v1/api-keys/{id}/suspend", "suspend", 200, apiKey("/suspend", nil)),
		key("POST /api/v1/api-keys/{id}/reactivate", "reactivate", 200, apiKey("/reactivate", nil)),
		key("POST /api/v1/api-keys/{id}/revoke", "revoke", 200, apiKey("/revoke", nil)),
		key("POST /api/v1/api-keys/{id}/rotate", "rotate", 201, apiKey("/rotate", map[string]int{"grace_period_seconds": 0})),
		{route: "GET /api/v1/orgs/{org}/api-keys", scope: scopeOrg, ok: 200, perm: keybridge.PermAPIKeysWrite, objects: orgAB,
			build: orgPath("/api-keys")},

		// Providers and upstream keys (SPEC §4; docs/providers.md "Who may do what").
		{route: "GET /api/v1/orgs/{org}/providers", scope: scopeOrg, ok: 200, see: pRead, objects: orgAB, build: orgPath("/providers")},
		{route: "POST /api/v1/orgs/{org}/providers", scope: scopeOrg, ok: 201, see: pRead, perm: pWrite, objects: orgAB,
			build: orgBody("/providers", func(f *mfix, c *mcell) any {
				return map[string]any{"name": "made-" + f.uniq(), "type": "openai", "base_url": f.openai.URL + "/v1"}
			})},
		{route: "POST /api/v1/orgs/{org}/providers/test", scope: scopeOrg, ok: 200, see: pRead, perm: pWrite, objects: orgAB,
			build: orgBody("/providers/test", func(f *mfix, c *mcell) any {
				return map[string]any{"type": "openai", "base_url": f.openai.URL + "/v1", "api_key": f.upstreamKey}
			})},
		{route: "GET /api/v1/orgs/{org}/providers/{provider}", scope: scopeOrg, ok: 200, see: pRead, object: true,
			objects: objects3, build: provider("", nil)},
		{route: "PATCH /api/v1/orgs/{org}/providers/{provider}", scope: scopeOrg, ok: 200, see: pRead, object: true, perm: pWrite,
			objects: objects3, build: provider("", map[string]string{"display_name": "Renamed"})},
		{route: "DELETE /api/v1/orgs/{org}/providers/{provider}", scope: scopeOrg, ok: 204, see: pRead, object: true, perm: pWrite,
			objects: objects3, fresh: true, build: provider("", nil)},
		{route: "GET /api/v1/orgs/{org}/providers/{provider}/usage", scope: scopeOrg, ok: 200, see: pRead, object: true, perm: pWrite,
			objects: objects3, build: provider("/usage", nil)},
		{route: "GET /api/v1/orgs/{org}/providers/{provider}/keys", scope: scopeOrg, ok: 200, see: pRead, object: true, sub: pWrite,
			perm: pWrite, objects: objects3, build: provider("/keys", nil)},
		{route: "POST /api/v1/orgs/{org}/providers/{provider}/keys", scope: scopeOrg, ok: 201, see: pRead, object: true, sub: pWrite,
			perm: pWrite, objects: objects3, fresh: true, build: func(f *mfix, c *mcell) mreq {
				return mreq{path: "/api/v1/orgs/" + c.pathOrg(f) + "/providers/" + f.providerFor(c) + "/keys",
					body: map[string]string{"api_key": "sk-made-" + f.uniq() + "-0123456789abcdef"}}
			}},
		{route: "PATCH /api/v1/orgs/{org}/providers/{provider}/keys/{keyID}", scope: scopeOrg, ok: 200, see: pRead, object: true,
			sub: pWrite, perm: pWrite, objects: objects4, build: providerKey(map[string]string{"name": "renamed"})},
		{route: "DELETE /api/v1/orgs/{org}/providers/{provider}/keys/{keyID}", scope: scopeOrg, ok: 204, see: pRead, object: true,
			sub: pWrite, perm: pWrite, objects: objects4, fresh: true, build: providerKey(nil)},

		// Personal credentials (SPEC §6): the org and provider come in the body.
		{route: "POST /api/v1/users/me/credentials", scope: scopeOrg, ok: 201, see: pRead, object: true, objects: objects3,
			fresh: true, build: func(f *mfix, c *mcell) mreq {
				return mreq{path: "/api/v1/users/me/credentials", body: map[string]string{"org": c.pathOrg(f),
					"provider": f.providerFor(c), "api_key": "sk-personal-" + f.uniq() + "-0123456789"}}
			}},
		{route: "PATCH /api/v1/users/me/credentials/{id}", scope: scopeCredential, ok: 200, objects: userObjs,
			build: credential(func(f *mfix) any {
				return map[string]string{"api_key": "sk-personal-" + f.uniq() + "-0123456789"}
			})},
		{route: "DELETE /api/v1/users/me/credentials/{id}", scope: scopeCredential, ok: 204, objects: userObjs, fresh: true,
			build: credential(nil)},

		// Projects and AI keys (SPEC §5).
		{route: "GET /api/v1/orgs/{org}/projects", scope: scopeOrg, ok: 200, see: jRead, objects: orgAB, build: orgPath("/projects")},
		{route: "POST /api/v1/orgs/{org}/projects", scope: scopeOrg, ok: 201, see: jRead, perm: jWrite, objects: orgAB,
			build: orgBody("/projects", func(f *mfix, c *mcell) any { return map[string]string{"name": "made-" + f.uniq()} })},
		{route: "GET /api/v1/orgs/{org}/projects/{projectID}", scope: scopeOrg, ok: 200, see: jRead, object: true,
			objects: objects3, build: project("", nil)},
		{route: "PATCH /api/v1/orgs/{org}/projects/{projectID}", scope: scopeOrg, ok: 200, see: jRead, object: true, perm: jWrite,
			objects: objects3, build: project("", map[string]string{"description": "changed"})},
		{route: "DELETE /api/v1/orgs/{org}/projects/{projectID}", scope: scopeOrg, ok: 204, see: jRead, object: true, perm: jWrite,
			objects: objects3, fresh: true, build: project("", nil)},
		{route: "GET /api/v1/orgs/{org}/projects/{projectID}/ai-keys", scope: scopeOrg, ok: 200, see: jRead, object: true,
			sub: jRead, objects: objects3, build: project("/ai-keys", nil)},
		{route: "POST /api/v1/orgs/{org}/projects/{projectID}/ai-keys", scope: scopeOrg, ok: 201, see: jRead, object: true,
			sub: jRead, perm: jWrite, objects: objects3, build: project("/ai-keys", map[string]string{"name": "made", "ai_type": "OPENAI"})},
		{route: "PATCH /api/v1/orgs/{org}/projects/{projectID}/ai-keys/{id}", scope: scopeOrg, ok: 200, see: jRead, object: true,
			sub: jRead, perm: jWrite, objects: objects4, build: aiKey(map[string]int{"rate_limit_rpm": 1000})},
		{route: "DELETE /api/v1/orgs/{org}/projects/{projectID}/ai-keys/{id}", scope: scopeOrg, ok: 204, see: jRead, object: true,
			sub: jRead, perm: jWrite, objects: objects4, fresh: true, build: aiKey(nil)},

		// Audit and usage (SPEC §7.7, §8).
		{route: "GET /api/v1/orgs/{org}/audit-events", scope: scopeOrg, ok: 200, see: keybridge.PermAuditRead, objects: orgAB,
			build: orgPath("/audit-events")},
		{route: "GET /api/v1/orgs/{org}/audit-events/verify", scope: scopeOrg, ok: 200, see: keybridge.PermAuditRead, objects: orgAB,
			build: orgPath("/audit-events/verify")},
		{route: "GET /api/v1/orgs/{org}/usage", scope: scopeOrg, ok: 200, see: keybridge.PermUsageRead, objects: orgAB,
			build: orgPath("/usage?group_by=provider")},
	}
	// The gateway (SPEC §7.2), any method: a call and a model list.
	for m, objs := range map[string][]objKind{"POST": gwPOST, "GET": gwObjects} {
		rows = append(rows, matrixRow{route: m + " " + gatewayRoute, scope: scopeGateway, ok: 200, objects: objs,
			build: func(f *mfix, c *mcell) mreq { return f.gatewayRequest(c, m) }})
	}
	// The Responses API over WebSocket (SPEC §7.1): the upgrade is
	// authorized like any request, and an allowed one is answered 101.
	rows = append(rows, matrixRow{route: "GET " + gatewayRoute, variant: "WebSocket", scope: scopeGateway, ok: 101,
		socket: true, objects: gwSocket, build: func(f *mfix, c *mcell) mreq { return f.socketRequest(c) }})
	return rows
}

// membersCredentialFlags: only admins see whether a member has a personal
// credential (SPEC §6); a member sees at most their own.
func membersCredentialFlags(c *mcell, body []byte) string {
	if c.caller.spec.role != keybridge.RoleMember {
		return ""
	}
	var out struct {
		Items []struct {
			UserID      string          `json:"user_id"`
			Credentials map[string]bool `json:"credentials"`
		} `json:"items"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return "the member list does not decode: " + err.Error()
	}
	for _, m := range out.Items {
		if m.UserID != c.caller.userID && len(m.Credentials) > 0 {
			return "a member sees another member's personal-credential flags (SPEC §6: an admin sees whether a member has one)"
		}
	}
	return ""
}

// gatewayRoute is the gateway's one mount (cli's serve: gateway.Beside).
const gatewayRoute = "/gateway/{provider}/{path...}"

func (r *matrixRow) method() string { m, _, _ := strings.Cut(r.route, " "); return m }

// name is the row's route, with its variant.
func (r *matrixRow) name() string {
	if r.variant == "" {
		return r.route
	}
	return r.route + " (" + r.variant + ")"
}

func unsafeMethod(m string) bool { return m != "GET" && m != "HEAD" && m != "OPTIONS" }

// expect is the spec's answer for one cell, with the rule that gives it.
func (r *matrixRow) expect(c *callerSpec, o objKind) (int, string) {
	switch r.scope {
	case scopePublic:
		return r.ok, "needs no authentication (SPEC §2, §3, §10)"
	case scopeGateway:
		return r.expectGateway(c, o)
	}
	if !c.valid() {
		return 401, "missing, malformed, unknown, suspended, revoked, expired or rotated-out credential, or an AI key on the management API (SPEC §1, §3)"
	}
	if c.kind == credSession && (!c.csrf || c.wrongCSRF) && unsafeMethod(r.method()) {
		return 403, "a session's unsafe request without X-CSRF-Token (SPEC §2)"
	}
	eff := c.effective()
	isKey := c.kind == credKey
	switch r.scope {
	case scopeUser:
		if r.allKeys && isKey && eff != keybridge.AllPermissions {
			return 403, "with a key, only one holding every permission creates an org (docs/identity-and-keys.md)"
		}
		return r.ok, "any authenticated caller"
	case scopeOrg:
		pathOrg := "A"
		if o == objForeignOrg {
			pathOrg = "B"
		}
		if pathOrg != c.org() {
			return 404, "an org the caller is not in: existence never leaks (SPEC §1)"
		}
		if r.see != 0 && !eff.Has(r.see) {
			return 403, "sees the org but lacks " + r.see.String() + " (SPEC §2)"
		}
		if r.object && o == objForeignID {
			return 404, "an object of another org (SPEC §1: never 403)"
		}
		if r.keyWrite && isKey && !eff.Has(keybridge.PermAPIKeysWrite) {
			return 403, "a key needs api_keys:write to create keys (docs/identity-and-keys.md)"
		}
		if !eff.Has(r.grants) {
			return 403, "a key with more permissions than the caller holds (SPEC §3)"
		}
		if r.sub != 0 && !eff.Has(r.sub) {
			return 403, "sees the parent but lacks " + r.sub.String() + " for its sub-resource (SPEC §4)"
		}
		if o == objOtherParent {
			return 404, "an object of another parent (SPEC §1, §4: never 403)"
		}
		if r.perm != 0 && !eff.Has(r.perm) {
			return 403, "sees the object but lacks " + r.perm.String() + " (SPEC §2)"
		}
		if r.owner && c.role != keybridge.RoleOwner {
			return 403, "only owners may (SPEC §2)"
		}
		return r.ok, "allowed"
	case scopeAPIKey:
		// Own: the caller's own key, in its org. Other parent: another
		// user's key in org A; other-org id: a key of a user of org B.
		objOrg := "A"
		if o == objForeignID || (o == objOwn && c.otherOrg) {
			objOrg = "B"
		}
		if objOrg != c.org() {
			return 404, "a key of another org (SPEC §1)"
		}
		needsWrite := r.action == "change" || r.action == "reactivate" || r.action == "rotate"
		if o == objOwn {
			if needsWrite && isKey && !eff.Has(keybridge.PermAPIKeysWrite) {
				return 403, "a key needs api_keys:write to change, reactivate or rotate keys (docs/identity-and-keys.md)"
			}
			return r.ok, "the caller's own key"
		}
		if !eff.Has(keybridge.PermAPIKeysWrite) {
			return 404, "another user's key, to a caller who may not manage the org's keys (docs/identity-and-keys.md)"
		}
		if r.action == "change" || r.action == "rotate" {
			return 403, "admins see and suspend, reactivate or revoke another user's key, but do not change or rotate it (docs/identity-and-keys.md)"
		}
		return r.ok, "an admin managing a member's key (SPEC §3)"
	case scopeCredential:
		if o != objOwn {
			return 404, "another user's personal credential, even to an admin (SPEC §6)"
		}
		return r.ok, "the caller's own credential (SPEC §6)"
	}
	panic("unknown scope")
}

// gwType is the type of each gateway object's provider (SPEC §4); the
// user provider and org B's are openai providers. Unknown and disabled
// ones have none a caller could reach.
var gwType = map[objKind]keybridge.ProviderType{
	gwOpenAI: keybridge.ProviderOpenAI, gwAnthropic: keybridge.ProviderAnthropic, gwGoogle: keybridge.ProviderGoogle,
	gwBedrock: keybridge.ProviderBedrock, gwAzure: keybridge.ProviderAzureOpenAI, gwCompat: keybridge.ProviderOpenAICompatible,
	gwUserSource: keybridge.ProviderOpenAI, gwForeign: keybridge.ProviderOpenAI,
}

// aiReaches is which provider types each ai_type reaches (SPEC §5).
var aiReaches = map[keybridge.AIType][]keybridge.ProviderType{
	keybridge.AIOpenAI:    {keybridge.ProviderOpenAI, keybridge.ProviderAzureOpenAI},
	keybridge.AIAnthropic: {keybridge.ProviderAnthropic},
	keybridge.AIGoogle:    {keybridge.ProviderGoogle},
	keybridge.AIAWS:       {keybridge.ProviderBedrock},
	keybridge.AIOther:     {keybridge.ProviderOpenAICompatible},
}

// matrixAllowlist is the allowed_models of the allowlist callers: the
// openai and compatible calls' model, and Anthropic's by a pattern.
var matrixAllowlist = []string{mdlOpenAI, "claude-*"}

// The models the gateway cells call. An Azure call names its deployment in
// the path and, as clients also do, a model in the body; the deployment
// is what Azure runs.
const (
	mdlOpenAI       = "gpt-4o-mini"
	mdlAnthropic    = "claude-3-5-haiku-latest"
	mdlGemini       = "gemini-2.0-flash"
	mdlBedrock      = "anthropic.claude-3-5-haiku"
	azureDeployment = "gpt-4o"
)

// calledModel is the model a gateway cell's request calls, read where
// SPEC §7.2 reads it (a Bedrock or Gemini path, else the body's "model")
// and, for Azure, where docs/gateway.md "Model allowlists" does (the
// deployment in the path); needed reports whether a request naming none
// is refused: all but model lists (a GET of a models path), a WebSocket
// upgrade included (docs/gateway.md "WebSocket").
func (r *matrixRow) calledModel(o objKind) (model string, needed bool) {
	switch {
	case r.socket:
		return "", true
	case r.method() == "GET":
		return "", false
	}
	switch gwType[o] {
	case keybridge.ProviderAnthropic:
		return mdlAnthropic, true
	case keybridge.ProviderGoogle:
		return mdlGemini, true
	case keybridge.ProviderBedrock:
		return mdlBedrock, true
	case keybridge.ProviderAzureOpenAI:
		return azureDeployment, true
	}
	return mdlOpenAI, true
}

// allowlisted reports whether model matches one of list's exact names or
// prefix* patterns (SPEC §7.2).
func allowlisted(list []string, model string) bool {
	for _, p := range list {
		if prefix, ok := strings.CutSuffix(p, "*"); (ok && strings.HasPrefix(model, prefix)) || p == model {
			return true
		}
	}
	return false
}

// expectGateway is SPEC §7.2 (and §5 for AI keys' types) for one cell.
func (r *matrixRow) expectGateway(c *callerSpec, o objKind) (int, string) {
	activeKey := c.activeKey()
	liveAI := (c.kind == credAISecret && !c.deleted) || (c.kind == credSigV4 && !c.badSignature)
	if !activeKey && !liveAI {
		return 401, "the gateway takes an active platform key, a live AI key secret or an AWS AI key's valid signature; anything else is 401 (SPEC §7.2)"
	}
	if activeKey && !c.effective().Has(keybridge.PermGatewayInvoke) {
		return 403, "no gateway:invoke (SPEC §7.2)"
	}
	inA := o != gwForeign && o != gwDisabled && o != gwUnknown
	if exists := (c.org() == "A" && inA) || (c.org() == "B" && o == gwForeign); !exists {
		return 404, "an unknown or disabled provider, or another org's (SPEC §7.1)"
	}
	if liveAI && !slices.Contains(aiReaches[c.ai()], gwType[o]) {
		return 403, "an AI key on a provider of another type than its ai_type (SPEC §5, §7.2)"
	}
	if o == gwUserSource {
		if liveAI {
			return 403, "an AI key acts for a project, not a person: a user provider refuses it (SPEC §7.2)"
		}
		return 403, "a user provider and no personal key (SPEC §6, §7.2)"
	}
	if c.allowlist {
		model, needed := r.calledModel(o)
		switch {
		case model == "" && needed:
			return 403, "a key with a model allowlist, and a request naming no model that is not a model list (SPEC §7.2; a WebSocket upgrade names none: docs/gateway.md)"
		case model != "" && !allowlisted(matrixAllowlist, model):
			return 403, fmt.Sprintf("model %q is not on the key's allowlist (SPEC §7.2)", model)
		}
	}
	return r.ok, "allowed"
}

// callerInst is a caller made in an org.
type callerInst struct {
	spec   *callerSpec
	org    *keybridge.Org
	userID string
	token  string // bearer token, if any
	cookie string // session cookie, if any
	csrf   string
	// sigKey and sigSecret sign requests with SigV4.
	sigKey, sigSecret string
	client            *http.Client
	// ownKey is a key of the caller's user besides the one it calls with;
	// ownCred a personal credential of its user.
	ownKey, ownCred string
}

// mcell is one cell being run.
type mcell struct {
	row    *matrixRow
	caller *callerInst
	obj    objKind
	// fresh: the cell is allowed and its row changes its object.
	fresh bool
	// orgOverride: a fresh org the path names instead of org A or B.
	orgOverride *keybridge.Org
	// marker, on a gateway cell, is the cellHeader value that tells its
	// request apart among those the mocks received.
	marker string
}

// pathOrg is the org slug the request names.
func (c *mcell) pathOrg(f *mfix) string {
	if c.orgOverride != nil {
		return c.orgOverride.Slug
	}
	if c.obj == objForeignOrg {
		return f.orgs["B"].Slug
	}
	return f.orgs["A"].Slug
}

// objOrg is the org the cell's object lives in.
func (c *mcell) objOrg() string {
	if c.obj == objForeignID || c.obj == objForeignOrg {
		return "B"
	}
	return "A"
}

// orgShared holds one org's shared objects.
type orgShared struct {
	org      *keybridge.Org
	adminKey string // an owner key with every permission, for set-up
	provider string // an openai provider (id)
	provKey  string // one of its upstream keys
	// provider2 and prov2Key: another provider and its key (other parent).
	provider2, prov2Key string
	project, aiKey      string
	project2, ai2Key    string
	peer                string // a member who is no caller
	peerKey, peerCred   string
	target              string // a member for PATCH cells to change
	ownerTarget         string // an owner for them (never the last one)
	invitation          string // a pending invitation's id
}

// mfix is the fixture the matrix runs on.
type mfix struct {
	t                                               testing.TB
	e                                               *env
	url                                             string
	openai, anthropic                               *providertest.Server
	upstreamKey                                     string
	orgs                                            map[string]*keybridge.Org
	shared                                          map[string]*orgShared
	callers                                         []*callerInst
	loginEmail                                      string
	unknownKey                                      string
	seq                                             atomic.Int64
	clientSeq                                       atomic.Int32
	openaiName, anthName, foreignName, disabledName string
	googleName, userSourceName, bedrockName         string
	bedrock                                         *providertest.Server
	// otherCSRF is the CSRF token of a session no caller uses.
	otherCSRF string
	gemini    *providertest.Server
	// azure and compat are the mocks of the azure-openai and the
	// openai-compatible provider (both OpenAI mocks, which serve Azure's
	// paths too).
	azure, compat         *providertest.Server
	azureName, compatName string

	// marks are the gateway cells run, by marker.
	marksMu sync.Mutex
	marks   map[string]cellMark
}

// cellMark is what the end of the run checks of a gateway cell: a refused
// one must have reached no provider, an allowed one its own, once.
type cellMark struct {
	name    string
	want    int
	allowed bool
	mock    *providertest.Server
}

// cellHeader carries a gateway cell's marker, which the gateway forwards
// like any other header.
const cellHeader = "X-Matrix-Cell"

// mark registers a gateway cell and returns its marker.
func (f *mfix) mark(m cellMark) string {
	marker := fmt.Sprintf("cell-%d", f.seq.Add(1))
	f.marksMu.Lock()
	defer f.marksMu.Unlock()
	f.marks[marker] = m
	return marker
}

// reachedProviders checks what every mock received against the marked
// cells: a request of a refused cell upstream is a failure however the
// cell was answered, and an allowed cell must have reached its own
// provider's mock exactly once (which also shows that the markers pass).
func (f *mfix) reachedProviders() (failures []cellResult, upstream int) {
	mocks := []*providertest.Server{f.openai, f.anthropic, f.gemini, f.bedrock, f.azure, f.compat}
	seen := map[string]int{}
	var out []cellResult
	for _, m := range mocks {
		for _, r := range m.Requests() {
			upstream++
			marker := r.Header.Get(cellHeader)
			if marker == "" {
				continue // a provider test or live usage probe of the management API
			}
			c, ok := f.marks[marker]
			switch {
			case !ok:
				out = append(out, cellResult{"~" + marker, fmt.Sprintf("a provider received %s %s with the unknown cell marker %q", r.Method, r.URI, marker)})
			case !c.allowed:
				out = append(out, cellResult{c.name, fmt.Sprintf("%s: refused (want %d), yet its request reached a provider: %s %s", c.name, c.want, r.Method, r.URI)})
			case m != c.mock:
				out = append(out, cellResult{c.name, fmt.Sprintf("%s: reached another provider's upstream: %s %s", c.name, r.Method, r.URI)})
			default:
				seen[marker]++
			}
		}
	}
	for marker, c := range f.marks {
		if c.allowed && seen[marker] != 1 {
			out = append(out, cellResult{c.name, fmt.Sprintf("%s: allowed (want %d), and its provider received it %d times, want once", c.name, c.want, seen[marker])})
		}
	}
	return out, upstream
}

// setupFailure is a set-up step that failed: a panic, so that a cell's
// worker goroutine can report it (t.Fatal must not be called there).
type setupFailure struct{ msg string }

func (f *mfix) fatalf(format string, args ...any) {
	panic(setupFailure{fmt.Sprintf(format, args...)})
}

// newOrg creates an org with no members (the caller made in it becomes
// its owner).
func (f *mfix) newOrg() *keybridge.Org {
	org := &keybridge.Org{Slug: "fresh-" + f.uniq(), Name: "Fresh"}
	if err := f.e.Store.CreateOrg(context.Background(), org); err != nil {
		f.fatalf("create org: %v", err)
	}
	return org
}

func (f *mfix) uniq() string { return fmt.Sprintf("%d-%d", time.Now().UnixNano()%1e9, f.seq.Add(1)) }

// newClient returns a client that connects from its own loopback address,
// so that per-IP limits (leak reports, failed logins) see every caller as
// a client of its own.
func (f *mfix) newClient() *http.Client {
	n := f.clientSeq.Add(1)
	ip := net.IPv4(127, 0, byte(1+n/250), byte(2+n%250))
	local := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
	plain := &net.Dialer{Timeout: 10 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if c, err := local.DialContext(ctx, network, addr); err == nil {
			return c, nil
		}
		// A loopback without 127/8 (some sandboxes): one address for all.
		return plain.DialContext(ctx, network, addr)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4}}
}

// api calls the management API with key and fails the set-up unless the
// answer is want; it returns the decoded body.
func (f *mfix) api(method, path, key string, body any, want int) map[string]any {
	resp, b := f.send(http.DefaultClient, method, path, body, func(r *http.Request) {
		r.Header.Set("Authorization", "Bearer "+key)
	})
	if resp.StatusCode != want {
		f.fatalf("set-up: %s %s = %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}

func (f *mfix) send(client *http.Client, method, path string, body any, prepare func(*http.Request)) (*http.Response, []byte) {
	var rd io.Reader
	if body != nil {
		j, err := json.Marshal(body)
		if err != nil {
			f.fatalf("%v", err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, f.url+path, rd)
	if err != nil {
		f.fatalf("%v", err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	prepare(req)
	resp, err := client.Do(req)
	if err != nil {
		f.fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		f.fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp, b
}

func (f *mfix) newProvider(org string, name string, fields map[string]any) string {
	body := map[string]any{"name": name, "type": "openai", "base_url": f.openai.URL + "/v1"}
	for k, v := range fields {
		body[k] = v
	}
	out := f.api("POST", "/api/v1/orgs/"+f.orgs[org].Slug+"/providers", f.shared[org].adminKey, body, 201)
	return out["id"].(string)
}

func (f *mfix) newProviderKey(org, provider, key string) string {
	out := f.api("POST", "/api/v1/orgs/"+f.orgs[org].Slug+"/providers/"+provider+"/keys", f.shared[org].adminKey,
		map[string]string{"api_key": key}, 201)
	return out["id"].(string)
}

func (f *mfix) newProject(org string) string {
	out := f.api("POST", "/api/v1/orgs/"+f.orgs[org].Slug+"/projects", f.shared[org].adminKey,
		map[string]string{"name": "project-" + f.uniq()}, 201)
	return out["id"].(string)
}

// newAIKey creates an OPENAI AI key in project and returns its id, public
// key and secret.
func (f *mfix) newAIKey(org, project string) (id, key, secret string) {
	return f.newAIKeyOf(org, project, keybridge.AIOpenAI)
}

// newAIKeyOf is newAIKey for any ai_type.
func (f *mfix) newAIKeyOf(org, project string, aiType keybridge.AIType) (id, key, secret string) {
	out := f.api("POST", "/api/v1/orgs/"+f.orgs[org].Slug+"/projects/"+project+"/ai-keys", f.shared[org].adminKey,
		map[string]string{"name": "ai-" + f.uniq(), "ai_type": string(aiType)}, 201)
	return out["id"].(string), out["key"].(string), out["secret"].(string)
}

// newInvitation invites a new address to org and returns the
// invitation's id (the user_id the answer names).
func (f *mfix) newInvitation(org string) string {
	out := f.api("POST", "/api/v1/orgs/"+f.orgs[org].Slug+"/members", f.shared[org].adminKey,
		map[string]string{"email": "invitee-" + f.uniq() + "@x.test", "name": "Invitee", "role": "member"}, 201)
	return out["user_id"].(string)
}

// newUser creates a user with role in org and memberPassword.
func (f *mfix) newUser(org *keybridge.Org, role keybridge.Role) *keybridge.User {
	ctx := context.Background()
	h, err := auth.HashPassword(memberPassword)
	if err != nil {
		f.fatalf("%v", err)
	}
	u := &keybridge.User{Email: string(role) + "-" + f.uniq() + "@" + org.Slug + ".test", Name: "A " + string(role), PasswordHash: h}
	err = f.e.Store.InTx(ctx, func(tx store.Store) error {
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		return tx.CreateMembership(ctx, &keybridge.Membership{OrgID: org.ID, UserID: u.ID, Role: role})
	})
	if err != nil {
		f.fatalf("create user: %v", err)
	}
	return u
}

// newKey stores a platform key of user in org and returns its id and
// plaintext. status is as callerSpec's; models, when given, are its
// allowed_models.
func (f *mfix) newKey(orgID, userID string, perms keybridge.Permissions, status string, models ...string) (string, string) {
	token, err := apikey.Generate(apikey.PlatformPrefix)
	if err != nil {
		f.fatalf("%v", err)
	}
	h := apikey.Hash(token)
	k := &keybridge.APIKey{OrgID: orgID, UserID: userID, Name: "matrix key", Prefix: apikey.Display(token),
		Hash: h[:], Permissions: perms, Status: keybridge.KeyActive, AllowedModels: models}
	past := time.Now().Add(-time.Hour)
	switch status {
	case "suspended":
		k.Status = keybridge.KeySuspended
	case "revoked":
		k.Status = keybridge.KeyRevoked
		k.RevokedAt = &past
	case "expired":
		k.ExpiresAt = &past
	case "rotated":
		k.GraceUntil = &past
	}
	if err := f.e.Store.CreateAPIKey(context.Background(), k); err != nil {
		f.fatalf("create key: %v", err)
	}
	return k.ID, token
}

// newCredential stores a personal credential of user for provider.
func (f *mfix) newCredential(orgID, userID, providerID string) string {
	secret := []byte("sk-personal-" + f.uniq() + "-0123456789")
	c := &keybridge.Credential{ID: uuid.Must(uuid.NewV7()).String(), UserID: userID, OrgID: orgID, ProviderID: providerID,
		Hint: keybridge.Hint(string(secret))}
	var err error
	if c.Sealed, err = f.e.Ring.Seal(secret, keybridge.SealedCredential.AD(c.ID)); err != nil {
		f.fatalf("%v", err)
	}
	c.Fingerprint = f.e.Ring.Fingerprint("user_credential"+providerID, secret)
	if err := f.e.Store.CreateCredential(context.Background(), c); err != nil {
		f.fatalf("create credential: %v", err)
	}
	return c.ID
}

// keyWithStatus returns the plaintext of a key of user in org that has
// status. Suspension, revocation and rotation go through the API, as a
// user would do them, made with another key so that the one returned was
// never used (and cached) before; an expired key is stored as such (the
// API refuses an expiry in the past).
func (f *mfix) keyWithStatus(org *keybridge.Org, shared *orgShared, userID string, perms keybridge.Permissions, status string) string {
	if status == "expired" {
		_, tok := f.newKey(org.ID, userID, perms, status)
		return tok
	}
	id, tok := f.newKey(org.ID, userID, perms, "")
	switch status {
	case "suspended", "revoked":
		action := map[string]string{"suspended": "suspend", "revoked": "revoke"}[status]
		f.api("POST", "/api/v1/api-keys/"+id+"/"+action, shared.adminKey, nil, 200)
	case "rotated":
		// Only a key's owner rotates it; a grace period of 0 ends at once.
		_, own := f.newKey(org.ID, userID, keybridge.AllPermissions, "")
		f.api("POST", "/api/v1/api-keys/"+id+"/rotate", own, map[string]int{"grace_period_seconds": 0}, 201)
	}
	return tok
}

// login signs a user in through the API and returns cookie and CSRF token.
func (f *mfix) login(client *http.Client, email string) (string, string) {
	resp, b := f.send(client, "POST", "/api/v1/auth/login", map[string]string{"email": email, "password": memberPassword},
		func(*http.Request) {})
	if resp.StatusCode != 200 {
		f.fatalf("set-up: login %s = %d %s", email, resp.StatusCode, b)
	}
	var out struct {
		CSRF string `json:"csrf_token"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.CSRF == "" {
		f.fatalf("login answer %s: %v", b, err)
	}
	for _, c := range resp.Cookies() {
		if c.Name == auth.SessionCookie {
			return c.Value, out.CSRF
		}
	}
	f.fatalf("login answer has no %s cookie", auth.SessionCookie)
	return "", ""
}

// instantiate makes a caller of spec in org.
func (f *mfix) instantiate(spec *callerSpec, org *keybridge.Org, shared *orgShared) *callerInst {
	c := &callerInst{spec: spec, org: org, client: f.newClient()}
	var u *keybridge.User
	if spec.role != "" {
		role := spec.role
		if spec.demoted {
			role = keybridge.RoleAdmin
		}
		u = f.newUser(org, role)
		c.userID = u.ID
	}
	switch spec.kind {
	case credMalformed:
		c.token = "not-a-key"
	case credUnknown:
		c.token = f.unknownKey
	case credTampered:
		_, tok := f.newKey(org.ID, u.ID, keybridge.AllPermissions, "")
		last := tok[len(tok)-1]
		repl := byte('A')
		if last == 'A' {
			repl = 'B'
		}
		c.token = tok[:len(tok)-1] + string(repl)
	case credKey:
		perms := spec.perms
		if perms == 0 {
			perms = spec.role.Permissions()
		}
		if spec.allowlist {
			_, c.token = f.newKey(org.ID, u.ID, perms, spec.status, matrixAllowlist...)
			break
		}
		c.token = f.keyWithStatus(org, shared, u.ID, perms, spec.status)
	case credSession:
		c.cookie, c.csrf = f.login(c.client, u.Email)
	case credAISecret, credAIKeyID, credSigV4:
		id, key, secret := f.newAIKeyOf(orgKey(f, org), shared.project, spec.ai())
		c.token = secret
		switch spec.kind {
		case credAIKeyID:
			c.token = key
		case credSigV4:
			c.token, c.sigKey, c.sigSecret = "", key, secret
			if spec.badSignature {
				c.sigSecret = secret + "x"
			}
		}
		if spec.allowlist {
			f.api("PATCH", "/api/v1/orgs/"+org.Slug+"/projects/"+shared.project+"/ai-keys/"+id, shared.adminKey,
				map[string]any{"allowed_models": matrixAllowlist}, 200)
		}
		if spec.deleted {
			f.api("DELETE", "/api/v1/orgs/"+org.Slug+"/projects/"+shared.project+"/ai-keys/"+id, shared.adminKey, nil, 204)
		}
	}
	if u != nil {
		c.ownKey, _ = f.newKey(org.ID, u.ID, spec.role.Permissions(), "")
		c.ownCred = f.newCredential(org.ID, u.ID, shared.provider)
	}
	if spec.demoted {
		f.api("PATCH", "/api/v1/orgs/"+org.Slug+"/members/"+u.ID, shared.adminKey, map[string]string{"role": string(spec.role)}, 200)
	}
	if spec.removed {
		if err := f.e.Store.DeleteMembership(context.Background(), org.ID, u.ID); err != nil {
			f.fatalf("remove member: %v", err)
		}
	}
	return c
}

func orgKey(f *mfix, org *keybridge.Org) string {
	for k, o := range f.orgs {
		if o.ID == org.ID {
			return k
		}
	}
	return ""
}

// newMatrixFixture builds the orgs, their objects, the mock providers, the
// gateway beside the API, and every caller.
func newMatrixFixture(t testing.TB, e *env) *mfix {
	t.Helper()
	defer func() {
		if v := recover(); v != nil {
			if sf, ok := v.(setupFailure); ok {
				t.Fatal(sf.msg)
			}
			panic(v)
		}
	}()
	f := &mfix{t: t, e: e, openai: providertest.NewOpenAI(t), anthropic: providertest.NewAnthropic(t),
		azure: providertest.NewOpenAI(t), compat: providertest.NewOpenAI(t), marks: map[string]cellMark{}}
	f.upstreamKey = "sk-matrix-upstream-0123456789abcdef"
	for _, m := range []*providertest.Server{f.openai, f.anthropic, f.azure, f.compat} {
		m.AddKey(f.upstreamKey)
	}
	tok, err := apikey.Generate(apikey.PlatformPrefix)
	if err != nil {
		t.Fatal(err)
	}
	f.unknownKey = tok

	// The gateway beside the API, as serve mounts them.
	ctx, cancel := context.WithCancel(context.Background())
	gw, err := gateway.New(gateway.Options{Store: e.Store, Ring: e.Ring, Auth: e.Auth})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := gw.Run(ctx); err != nil && ctx.Err() == nil {
			t.Errorf("gateway.Run: %v", err)
		}
	}()
	srv := httptest.NewServer(gw.Beside(e.API))
	t.Cleanup(func() { srv.Close(); cancel(); <-done })
	f.url = srv.URL

	other := e.otherOrg()
	f.orgs = map[string]*keybridge.Org{"A": e.Org, "B": other.Org}
	f.shared = map[string]*orgShared{
		"A": {org: e.Org, adminKey: e.OwnerKey},
		"B": {org: other.Org, adminKey: other.OwnerKey},
	}
	f.openaiName, f.anthName, f.disabledName, f.foreignName = "openai", "anthropic", "switched-off", "theirs"
	for _, k := range []string{"A", "B"} {
		s := f.shared[k]
		name := f.openaiName
		if k == "B" {
			name = f.foreignName
		}
		s.provider = f.newProvider(k, name, nil)
		s.provKey = f.newProviderKey(k, s.provider, f.upstreamKey)
		s.provider2 = f.newProvider(k, "second-"+strings.ToLower(k), nil)
		s.prov2Key = f.newProviderKey(k, s.provider2, "sk-matrix-second-0123456789abcdef")
		s.project = f.newProject(k)
		s.aiKey, _, _ = f.newAIKey(k, s.project)
		s.project2 = f.newProject(k)
		s.ai2Key, _, _ = f.newAIKey(k, s.project2)
		peer := f.newUser(s.org, keybridge.RoleMember)
		s.peer = peer.ID
		s.peerKey, _ = f.newKey(s.org.ID, peer.ID, keybridge.RoleMember.Permissions(), "")
		s.peerCred = f.newCredential(s.org.ID, peer.ID, s.provider)
		s.target = f.newUser(s.org, keybridge.RoleMember).ID
		s.ownerTarget = f.newUser(s.org, keybridge.RoleOwner).ID
		s.invitation = f.newInvitation(k)
	}
	anth := f.newProvider("A", f.anthName, map[string]any{"type": "anthropic", "base_url": f.anthropic.URL})
	f.newProviderKey("A", anth, f.upstreamKey)
	f.newProvider("A", f.disabledName, map[string]any{"enabled": false})
	f.googleName, f.userSourceName = "gemini", "personal"
	f.gemini = providertest.NewGemini(t)
	f.gemini.AddKey(f.upstreamKey)
	gem := f.newProvider("A", f.googleName, map[string]any{"type": "google", "base_url": f.gemini.URL})
	f.newProviderKey("A", gem, f.upstreamKey)
	f.newProvider("A", f.userSourceName, map[string]any{"key_source": "user"})
	f.bedrockName = "bedrock"
	ak, sk := "AKIAMATRIXUPSTREAM01", "matrix-upstream-aws-secret-0123456789"
	f.bedrock = providertest.NewBedrock(t, matrixRegion, ak, sk)
	f.newProvider("A", f.bedrockName, map[string]any{"type": "bedrock", "base_url": f.bedrock.URL,
		"settings": map[string]any{"region": matrixRegion, "access_key": ak, "access_key_secret": sk}})
	f.azureName, f.compatName = "azure", "compatible"
	az := f.newProvider("A", f.azureName, map[string]any{"type": "azure-openai", "base_url": f.azure.URL,
		"settings": map[string]any{"api_version": matrixAzureVersion}})
	f.newProviderKey("A", az, f.upstreamKey)
	compat := f.newProvider("A", f.compatName, map[string]any{"type": "openai-compatible", "base_url": f.compat.URL + "/v1"})
	f.newProviderKey("A", compat, f.upstreamKey)
	f.loginEmail = f.newUser(e.Org, keybridge.RoleMember).Email
	_, f.otherCSRF = f.login(f.newClient(), f.loginEmail)

	for i := range matrixCallers {
		spec := &matrixCallers[i]
		k := spec.org()
		f.callers = append(f.callers, f.instantiate(spec, f.orgs[k], f.shared[k]))
	}
	return f
}

// Object pickers: the shared object of the cell's kind, or a fresh one.

func (f *mfix) providerFor(c *mcell) string {
	s := f.shared[c.objOrg()]
	if c.fresh {
		return f.newProvider(c.objOrg(), "fresh-"+f.uniq(), nil)
	}
	return s.provider
}

func (f *mfix) providerKeyFor(c *mcell) (provider, key string) {
	s := f.shared[c.objOrg()]
	if c.obj == objOtherParent {
		return s.provider, s.prov2Key
	}
	if c.fresh {
		return s.provider, f.newProviderKey(c.objOrg(), s.provider, "sk-fresh-"+f.uniq()+"-0123456789")
	}
	return s.provider, s.provKey
}

func (f *mfix) projectFor(c *mcell) string {
	if c.fresh {
		return f.newProject(c.objOrg())
	}
	return f.shared[c.objOrg()].project
}

func (f *mfix) aiKeyFor(c *mcell) (project, key string) {
	s := f.shared[c.objOrg()]
	if c.obj == objOtherParent {
		return s.project, s.ai2Key
	}
	if c.fresh {
		id, _, _ := f.newAIKey(c.objOrg(), s.project)
		return s.project, id
	}
	return s.project, s.aiKey
}

func (f *mfix) memberFor(c *mcell) string {
	s := f.shared[c.objOrg()]
	role := c.row.targetRole
	if role == "" {
		role = keybridge.RoleMember
	}
	if c.row.invitation {
		if c.fresh {
			return f.newInvitation(c.objOrg())
		}
		return s.invitation
	}
	if c.fresh {
		return f.newUser(s.org, role).ID
	}
	if role == keybridge.RoleOwner {
		return s.ownerTarget
	}
	return s.target
}

// apiKeyFor: own is the caller's user's key, other parent another user's
// in org A, other-org id a key of a user of org B.
func (f *mfix) apiKeyFor(c *mcell) string {
	switch c.obj {
	case objOwn:
		if c.caller.userID == "" {
			return f.shared["A"].peerKey
		}
		if c.fresh {
			status := ""
			if c.row.action == "reactivate" {
				status = "suspended"
			}
			id, _ := f.newKey(c.caller.org.ID, c.caller.userID, c.caller.spec.role.Permissions(), status)
			return id
		}
		return c.caller.ownKey
	case objForeignID:
		return f.freshOr(c, "B", f.shared["B"].peerKey)
	default:
		return f.freshOr(c, "A", f.shared["A"].peerKey)
	}
}

// freshOr returns a new key of org's peer for a fresh cell, else shared.
func (f *mfix) freshOr(c *mcell, org, shared string) string {
	if !c.fresh {
		return shared
	}
	status := ""
	if c.row.action == "reactivate" {
		status = "suspended"
	}
	s := f.shared[org]
	id, _ := f.newKey(s.org.ID, s.peer, keybridge.RoleMember.Permissions(), status)
	return id
}

func (f *mfix) credentialFor(c *mcell) string {
	switch c.obj {
	case objOwn:
		if c.caller.userID == "" {
			return f.shared["A"].peerCred
		}
		if c.fresh {
			prov := f.newProvider(orgKey(f, c.caller.org), "fresh-"+f.uniq(), nil)
			return f.newCredential(c.caller.org.ID, c.caller.userID, prov)
		}
		return c.caller.ownCred
	case objForeignID:
		return f.shared["B"].peerCred
	default:
		return f.shared["A"].peerCred
	}
}

// gwName is the provider name a gateway cell's path holds.
func (f *mfix) gwName(o objKind) string {
	return map[objKind]string{gwOpenAI: f.openaiName, gwAnthropic: f.anthName, gwGoogle: f.googleName,
		gwUserSource: f.userSourceName, gwBedrock: f.bedrockName, gwAzure: f.azureName, gwCompat: f.compatName,
		gwForeign: f.foreignName, gwDisabled: f.disabledName, gwUnknown: "no-such-provider"}[o]
}

// gwMock is the mock a gateway object's provider forwards to.
func (f *mfix) gwMock(o objKind) *providertest.Server {
	switch gwType[o] {
	case keybridge.ProviderAnthropic:
		return f.anthropic
	case keybridge.ProviderGoogle:
		return f.gemini
	case keybridge.ProviderBedrock:
		return f.bedrock
	case keybridge.ProviderAzureOpenAI:
		return f.azure
	case keybridge.ProviderOpenAICompatible:
		return f.compat
	}
	return f.openai
}

// gatewayRequest is a call (POST) or a model list (GET) in the provider's
// own dialect, with the caller's key where that provider's SDK puts it.
func (f *mfix) gatewayRequest(c *mcell, method string) mreq {
	name := f.gwName(c.obj)
	if c.obj == gwBedrock {
		return mreq{path: "/gateway/" + name + "/model/" + mdlBedrock + "/converse",
			body: map[string]any{"messages": []map[string]any{{"role": "user", "content": []map[string]string{{"text": "hello"}}}}}}
	}
	if c.obj == gwGoogle {
		if method == "POST" {
			return mreq{path: "/gateway/" + name + "/v1beta/models/" + mdlGemini + ":generateContent", gwKeyQuery: true,
				body: map[string]any{"contents": []map[string]any{{"role": "user", "parts": []map[string]string{{"text": "hello"}}}}}}
		}
		return mreq{path: "/gateway/" + name + "/v1beta/models", gwKeyHeader: "x-goog-api-key"}
	}
	if c.obj == gwAnthropic {
		r := mreq{path: "/gateway/" + name + "/v1/models", header: map[string]string{"anthropic-version": "2023-06-01"},
			gwKeyHeader: "x-api-key"}
		if method == "POST" {
			r.path = "/gateway/" + name + "/v1/messages"
			r.body = map[string]any{"model": mdlAnthropic, "max_tokens": 16,
				"messages": []map[string]string{{"role": "user", "content": "hello"}}}
		}
		return r
	}
	chat := map[string]any{"model": mdlOpenAI, "messages": []map[string]string{{"role": "user", "content": "hello"}}}
	if c.obj == gwAzure {
		// As Azure clients call: the deployment in the path, the API
		// version in the query (the model list leaves it to the
		// provider's settings.api_version), the key in api-key.
		r := mreq{path: "/gateway/" + name + "/openai/models", gwKeyHeader: "api-key"}
		if method == "POST" {
			r.path = "/gateway/" + name + "/openai/deployments/" + azureDeployment + "/chat/completions?api-version=" + matrixAzureVersion
			r.body = chat
		}
		return r
	}
	r := mreq{path: "/gateway/" + name + "/models"}
	if method == "POST" {
		r.path = "/gateway/" + name + "/chat/completions"
		r.body = chat
	}
	return r
}

// socketRequest is the upgrade that opens the Responses API's WebSocket,
// as Codex sends it (on Azure, with the key in api-key and the API version
// left to the provider's settings).
func (f *mfix) socketRequest(c *mcell) mreq {
	name := f.gwName(c.obj)
	if c.obj == gwAzure {
		return mreq{path: "/gateway/" + name + "/openai/responses", gwKeyHeader: "api-key"}
	}
	return mreq{path: "/gateway/" + name + "/responses"}
}

const matrixAzureVersion = "2024-10-21"

// run sends one cell's request and returns its status, headers and body.
func (f *mfix) run(c *mcell) (int, http.Header, []byte) {
	method := c.row.method()
	req := c.row.build(f, c)
	prepare := func(r *http.Request) {
		for k, v := range req.header {
			r.Header.Set(k, v)
		}
		if c.marker != "" {
			r.Header.Set(cellHeader, c.marker)
		}
		if tok := c.caller.token; tok != "" {
			if req.gwKeyQuery {
				q := r.URL.Query()
				q.Set("key", tok)
				r.URL.RawQuery = q.Encode()
			} else if req.gwKeyHeader != "" {
				r.Header.Set(req.gwKeyHeader, tok)
			} else {
				r.Header.Set("Authorization", "Bearer "+tok)
			}
		}
		if c.caller.sigKey != "" {
			f.signV4(r, c.caller.sigKey, c.caller.sigSecret)
		}
		if c.caller.cookie != "" {
			r.AddCookie(&http.Cookie{Name: auth.SessionCookie, Value: c.caller.cookie})
			if c.caller.spec.csrf && unsafeMethod(method) {
				token := c.caller.csrf
				if c.caller.spec.wrongCSRF {
					token = f.otherCSRF
				}
				r.Header.Set("X-CSRF-Token", token)
			}
		}
	}
	if c.row.socket {
		return f.dialSocket(c.caller.client, req.path, prepare)
	}
	resp, b := f.send(c.caller.client, method, req.path, req.body, prepare)
	return resp.StatusCode, resp.Header, b
}

// dialSocket opens a WebSocket at path with coder/websocket, prepare
// applied to the upgrade request as it leaves. It returns the answer's
// status (101 when the socket opened; it is closed at once), headers and
// body.
func (f *mfix) dialSocket(client *http.Client, path string, prepare func(*http.Request)) (int, http.Header, []byte) {
	hc := *client
	hc.Transport = preparing{base: client.Transport, prepare: prepare}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.url, "http")+path, &websocket.DialOptions{HTTPClient: &hc})
	switch {
	case err == nil:
		conn.CloseNow()
		return resp.StatusCode, resp.Header, nil
	case resp == nil || resp.StatusCode == http.StatusSwitchingProtocols:
		f.fatalf("upgrade %s: %v", path, err)
	}
	var b []byte
	if resp.Body != nil {
		b, _ = io.ReadAll(resp.Body)
	}
	return resp.StatusCode, resp.Header, b
}

// preparing applies prepare to a copy of each request before base sends
// it: the WebSocket client builds its upgrade request itself.
type preparing struct {
	base    http.RoundTripper
	prepare func(*http.Request)
}

func (p preparing) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	p.prepare(r)
	return p.base.RoundTrip(r)
}

// signV4 signs r as an AWS SDK does, for service bedrock in matrixRegion.
func (f *mfix) signV4(r *http.Request, key, secret string) {
	var body []byte
	if r.GetBody != nil {
		rd, err := r.GetBody()
		if err != nil {
			f.fatalf("sign: %v", err)
		}
		body, _ = io.ReadAll(rd)
	}
	sum := sha256.Sum256(body)
	hash := hex.EncodeToString(sum[:])
	r.Header.Set("X-Amz-Content-Sha256", hash)
	creds := aws.Credentials{AccessKeyID: key, SecretAccessKey: secret}
	if err := v4.NewSigner().SignHTTP(r.Context(), creds, r, hash, "bedrock", matrixRegion, time.Now()); err != nil {
		f.fatalf("sign: %v", err)
	}
}

const matrixRegion = "us-east-1"

// TestAuthorizationMatrix checks every cell of routes × callers × objects
// against the spec's rules. A route of httpapi.Routes() without rows, or
// rows of a route that is gone, fail it.
func TestAuthorizationMatrix(t *testing.T) {
	rows := matrixRows()
	byRoute := map[string]bool{}
	for _, r := range rows {
		byRoute[r.route] = true
	}
	listed := map[string]bool{"POST " + gatewayRoute: true, "GET " + gatewayRoute: true}
	for _, r := range httpapi.Routes() {
		listed[r] = true
		if !byRoute[r] {
			t.Errorf("route %s has no rows in the authorization matrix: add them to matrixRows", r)
		}
	}
	for r := range byRoute {
		if !listed[r] {
			t.Errorf("the authorization matrix has rows for %s, which httpapi.Routes does not list", r)
		}
	}
	names := map[string]bool{}
	for _, r := range rows {
		names[r.name()] = true
	}
	for key := range matrixExceptions {
		if !names[strings.Split(key, "|")[0]] {
			t.Errorf("matrix exception %q names a route that does not exist", key)
		}
	}
	if t.Failed() {
		return
	}
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "# metrics\n") })
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			start := time.Now()
			// Probes are limited per org; the matrix's few allowed ones
			// must not depend on that limit's size.
			e := newEnvWith(t, eng.New(t), envOptions{Config: httpapi.Config{Metrics: metrics, ProbesPerMinute: 10_000}})
			e.Engine = eng.Name
			f := newMatrixFixture(t, e)
			setup := time.Since(start)
			runMatrix(t, f, rows)
			t.Logf("%s: set-up %v, whole run %v", eng.Name, setup.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
		})
	}
}

type cellResult struct {
	key, msg string
}

func runMatrix(t *testing.T, f *mfix, rows []matrixRow) {
	type job struct {
		row    *matrixRow
		caller *callerInst
		obj    objKind
	}
	var jobs []job
	for i := range rows {
		for _, c := range f.callers {
			for _, o := range rows[i].objects {
				jobs = append(jobs, job{&rows[i], c, o})
			}
		}
	}
	var (
		mu       sync.Mutex
		failures []cellResult
		excepted int
		byWant   = map[int]int{}
	)
	work := make(chan job)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				key := j.row.name() + "|" + j.caller.spec.name + "|" + objNames[j.obj]
				want, _ := j.row.expect(j.caller.spec, j.obj)
				msg, isExc := f.check(j.row, j.caller, j.obj, key)
				mu.Lock()
				byWant[want]++
				if isExc {
					excepted++
				}
				mu.Unlock()
				if msg != "" {
					mu.Lock()
					failures = append(failures, cellResult{key, msg})
					mu.Unlock()
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	reached, upstream := f.reachedProviders()
	failures = append(failures, reached...)
	sort.Slice(failures, func(i, k int) bool { return failures[i].key < failures[k].key })
	for _, fl := range failures {
		t.Error(fl.msg)
	}
	statuses := make([]int, 0, len(byWant))
	for st := range byWant {
		statuses = append(statuses, st)
	}
	sort.Ints(statuses)
	var split []string
	for _, st := range statuses {
		split = append(split, fmt.Sprintf("%d: %d", st, byWant[st]))
	}
	variants := 0
	for _, r := range rows {
		if r.variant != "" {
			variants++
		}
	}
	t.Logf("authorization matrix: %d cells checked (%d rows: the %d API routes, %d variants and the gateway's GET and POST; × %d callers × their objects; expected %s), %d known exceptions, %d differing; %d gateway cells, whose providers received %d requests in all",
		len(jobs), len(rows), len(httpapi.Routes()), variants, len(f.callers), strings.Join(split, ", "), excepted, len(failures), len(f.marks), upstream)
}

// check runs one cell and returns why it fails ("" if it does not), and
// whether it matched a known exception.
func (f *mfix) check(row *matrixRow, caller *callerInst, obj objKind, key string) (msg string, excepted bool) {
	defer func() {
		if v := recover(); v != nil {
			sf, ok := v.(setupFailure)
			if !ok {
				panic(v)
			}
			msg, excepted = fmt.Sprintf("%s by %s on %s: set-up failed: %s", row.name(), caller.spec.name, objNames[obj], sf.msg), false
		}
	}()
	want, why := row.expect(caller.spec, obj)
	cell := &mcell{row: row, caller: caller, obj: obj}
	allowed := want >= 200 && want < 300
	cell.fresh = allowed && row.fresh
	if allowed && row.freshOrg {
		// Deleting an org: a new one, with the caller made again in it,
		// so the fixture's orgs stay.
		cell.orgOverride = f.newOrg()
		cell.caller = f.instantiateBare(caller.spec, cell.orgOverride)
	}
	if row.freshSession && caller.spec.kind == credSession {
		cell.caller = f.instantiateBare(caller.spec, caller.org)
	}
	name := fmt.Sprintf("%s by %s on %s", row.name(), caller.spec.name, objNames[obj])
	if row.scope == scopeGateway {
		cell.marker = f.mark(cellMark{name: name, want: want, allowed: want < 400, mock: f.gwMock(obj)})
	}
	got, header, body := f.run(cell)
	problem := ""
	if got == want && row.inspect != nil {
		problem = row.inspect(cell, body)
	}
	exc, isExc := matrixExceptions[key]
	switch {
	case isExc && exc.content && got == want && problem != "":
		return "", true
	case isExc && got == want && problem == "":
		return fmt.Sprintf("%s = %d as the spec says: remove its matrix exception (%s)", name, got, exc.reason), false
	case isExc && !exc.content && got == exc.got:
		return "", true
	case got != want:
		return fmt.Sprintf("%s = %d, want %d (%s); body %s", name, got, want, why, trimBody(body)), false
	case problem != "":
		return fmt.Sprintf("%s = %d as it should, but %s; body %s", name, got, problem, trimBody(body)), false
	}
	if got >= 400 {
		if bad := errorShape(row.scope == scopeGateway, got, header, body); bad != "" {
			return fmt.Sprintf("%s = %d as it should, but %s; body %s", name, got, bad, trimBody(body)), false
		}
	}
	return "", false
}

// errorShape checks that a refusal is in the spec's error shape (SPEC §1)
// or, from the gateway, says which §1 code it is (SPEC §7.3).
func errorShape(gateway bool, status int, header http.Header, body []byte) string {
	if gateway {
		code := header.Get("X-Keybridge-Error")
		if code == "" || httpapi.Status(code) != status {
			return fmt.Sprintf("its X-Keybridge-Error is %q, not the code of a %d", code, status)
		}
		return ""
	}
	var e apiError
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Message == "" || httpapi.Status(e.Error.Code) != status {
		return fmt.Sprintf("the body is not the spec's error shape with the code of a %d", status)
	}
	return ""
}

// instantiateBare makes a caller for a fresh org or a fresh session: no
// own key or credential (the cells that use it need neither).
func (f *mfix) instantiateBare(spec *callerSpec, org *keybridge.Org) *callerInst {
	c := &callerInst{spec: spec, org: org, client: f.newClient()}
	if spec.role == "" {
		return c
	}
	u := f.newUser(org, spec.role)
	c.userID = u.ID
	switch spec.kind {
	case credKey:
		perms := spec.perms
		if perms == 0 {
			perms = spec.role.Permissions()
		}
		_, c.token = f.newKey(org.ID, u.ID, perms, spec.status)
	case credSession:
		c.cookie, c.csrf = f.login(c.client, u.Email)
	}
	return c
}

func trimBody(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
