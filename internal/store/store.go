// Package store defines the Store interface through which Keybridge keeps
// its state. It speaks domain types; the drivers (sqlite, postgres) hide SQL
// behind it, and storetest holds the one conformance suite both pass.
//
// Every method returns keybridge.ENotFound for a missing row and
// keybridge.EConflict for a uniqueness violation; other errors are internal.
// Lookups scoped by org return ENotFound for rows of another org, so
// existence never leaks across orgs.
package store

import (
	"context"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Page asks for one page of a list. Cursor is opaque: the NextCursor of the
// previous page, or empty for the first; any other cursor makes the list
// method return EInvalid.
type Page struct {
	Limit  int
	Cursor string
}

// Default and maximum page sizes (SPEC §1).
const (
	DefaultLimit = 50
	MaxLimit     = 500
)

// Store is all of Keybridge's persistent state.
type Store interface {
	// InTx runs fn in one transaction: fn's Store reads and writes inside
	// it; the transaction commits when fn returns nil and rolls back
	// otherwise. Nested InTx calls join the outer transaction.
	InTx(ctx context.Context, fn func(tx Store) error) error
	// Now returns the transaction's clock: one instant per transaction,
	// so every row it writes carries the same time.
	Now() time.Time

	Meta
	Identity
	APIKeys
	KeyRing
	Providers
	Credentials
	Projects
	Audit
	UsageStore
	Notifier

	// Ping checks the database answers.
	Ping(ctx context.Context) error
	// Close releases the database.
	Close() error
}

// Meta is a small key/value table for one-off state such as the setup token.
type Meta interface {
	// GetMeta returns the value of key, or ENotFound.
	GetMeta(ctx context.Context, key string) (string, error)
	// SetMeta sets key to value.
	SetMeta(ctx context.Context, key, value string) error
	// DeleteMeta removes key; a missing key is not an error.
	DeleteMeta(ctx context.Context, key string) error
	// TakeMeta removes key and returns the value it had, or ENotFound. Of
	// several transactions taking the same key at once exactly one gets
	// it, which makes one-time tokens single-use.
	TakeMeta(ctx context.Context, key string) (string, error)
}

// Identity stores orgs, users, memberships, invitations and sessions. The
// methods that change what a user's keys may do publish the invalidation
// themselves, in the transaction of the change; callers publish nothing.
type Identity interface {
	// CreateOrg inserts o, setting ID and times. EConflict on a used slug.
	CreateOrg(ctx context.Context, o *keybridge.Org) error
	// Org finds an org by ID or slug. ENotFound.
	Org(ctx context.Context, idOrSlug string) (*keybridge.Org, error)
	// UpdateOrg writes o's name and slug. ENotFound, EConflict.
	UpdateOrg(ctx context.Context, o *keybridge.Org) error
	// DeleteOrg deletes an org and everything it owns, and publishes
	// InvalidateAll: any cached key, provider or credential may have been
	// the org's. ENotFound.
	DeleteOrg(ctx context.Context, id string) error
	// CountOrgs counts every org; zero means setup has not run.
	CountOrgs(ctx context.Context) (int, error)
	// OrgsForUser lists the orgs userID belongs to, with its membership in each.
	OrgsForUser(ctx context.Context, userID string) ([]OrgMembership, error)

	// CreateUser inserts u, setting ID and times. EConflict on a used email.
	CreateUser(ctx context.Context, u *keybridge.User) error
	// User finds a user by ID. ENotFound.
	User(ctx context.Context, id string) (*keybridge.User, error)
	// UserByEmail finds a user by normalized email. ENotFound.
	UserByEmail(ctx context.Context, email string) (*keybridge.User, error)
	// UpdateUser writes u's name and password hash. ENotFound.
	UpdateUser(ctx context.Context, u *keybridge.User) error

	// CreateMembership inserts m and publishes InvalidateUser for the
	// user. EConflict when the user is already a member.
	CreateMembership(ctx context.Context, m *keybridge.Membership) error
	// Membership finds userID's membership of orgID. ENotFound.
	Membership(ctx context.Context, orgID, userID string) (*keybridge.Membership, error)
	// Members lists an org's members and pending invitations (as
	// Member.Invited) ordered by email.
	Members(ctx context.Context, orgID string, page Page) ([]keybridge.Member, string, error)
	// Member returns one member of orgID. ENotFound.
	Member(ctx context.Context, orgID, userID string) (*keybridge.Member, error)
	// UpdateMembership writes m's role and publishes InvalidateUser for
	// the user. ENotFound.
	UpdateMembership(ctx context.Context, m *keybridge.Membership) error
	// DeleteMembership removes userID from orgID and publishes
	// InvalidateUser for them. ENotFound.
	DeleteMembership(ctx context.Context, orgID, userID string) error
	// CountOwners counts an org's owners, locking them in PostgreSQL so
	// two concurrent demotions cannot both pass the last-owner check.
	CountOwners(ctx context.Context, orgID string) (int, error)

	// CreateInvitation inserts a pending invitation, setting ID (when
	// empty) and times. EConflict when orgID already has one for the email.
	CreateInvitation(ctx context.Context, inv *keybridge.Invitation) error
	// Invitation finds a pending invitation of orgID by ID. ENotFound.
	Invitation(ctx context.Context, orgID, id string) (*keybridge.Invitation, error)
	// InvitationByEmail finds orgID's pending invitation of a normalized
	// address. ENotFound.
	InvitationByEmail(ctx context.Context, orgID, email string) (*keybridge.Invitation, error)
	// InvitationByHash finds an invitation by the SHA-256 of its token,
	// expired ones too: the caller says why one no longer works. ENotFound.
	InvitationByHash(ctx context.Context, hash []byte) (*keybridge.Invitation, error)
	// UpdateInvitation writes inv's name, role, token hash and expiry (a
	// re-invitation). ENotFound.
	UpdateInvitation(ctx context.Context, inv *keybridge.Invitation) error
	// DeleteInvitation removes a pending invitation of orgID: it was
	// accepted or withdrawn. Of concurrent deletes of one invitation
	// exactly one succeeds, which makes accepting single-use. ENotFound.
	DeleteInvitation(ctx context.Context, orgID, id string) error

	// CreateSession inserts s, setting ID and CreatedAt.
	CreateSession(ctx context.Context, s *keybridge.Session) error
	// SessionByHash finds an unexpired session by the SHA-256 of its token. ENotFound.
	SessionByHash(ctx context.Context, hash []byte) (*keybridge.Session, error)
	// DeleteSession removes a session; a missing one is not an error.
	DeleteSession(ctx context.Context, id string) error
	// DeleteUserSessions removes every session of userID except the one
	// with ID keep (none when empty) and returns how many went.
	DeleteUserSessions(ctx context.Context, userID, keep string) (int64, error)
	// DeleteExpiredSessions removes sessions that expired at or before t
	// and returns how many went.
	DeleteExpiredSessions(ctx context.Context, t time.Time) (int64, error)
}

// OrgMembership is an org together with the caller's role in it.
type OrgMembership struct {
	Org  keybridge.Org
	Role keybridge.Role
}

// APIKeyFilter selects platform keys; empty fields do not filter.
type APIKeyFilter struct {
	OrgID  string
	UserID string
}

// APIKeys stores platform API keys.
type APIKeys interface {
	// CreateAPIKey inserts k, setting ID and times. EConflict on a used hash.
	CreateAPIKey(ctx context.Context, k *keybridge.APIKey) error
	// APIKey finds a key by ID. ENotFound.
	APIKey(ctx context.Context, id string) (*keybridge.APIKey, error)
	// APIKeyByHash finds a key by the SHA-256 of its plaintext. ENotFound.
	APIKeyByHash(ctx context.Context, hash []byte) (*keybridge.APIKey, error)
	// ListAPIKeys lists keys newest first.
	ListAPIKeys(ctx context.Context, f APIKeyFilter, page Page) ([]keybridge.APIKey, string, error)
	// UpdateAPIKey writes k's name, description, permissions, limits,
	// allowed models, status, revoked_at, grace_until and expires_at, and publishes an
	// invalidation for it. ENotFound.
	UpdateAPIKey(ctx context.Context, k *keybridge.APIKey) error
	// TouchAPIKeys sets last_used_at for many keys at once (the batched
	// write behind "last used"); it never moves a time backwards.
	TouchAPIKeys(ctx context.Context, lastUsed map[string]time.Time) error
}

// KeyRing stores the wrapped data keys and finds the sealed values they protect.
type KeyRing interface {
	// DataKeys lists every data key, oldest version first. Inside InTx it
	// locks the ring until the transaction ends, so changes of the ring
	// that read it first (rotation, master key change) run one at a time.
	DataKeys(ctx context.Context) ([]keybridge.DataKey, error)
	// CreateDataKey inserts a data key; when k.Primary it becomes the only
	// primary. It publishes InvalidateKeyRing. EConflict on a used version.
	CreateDataKey(ctx context.Context, k *keybridge.DataKey) error
	// UpdateDataKeyWrap replaces the wrapped form of a data key (a master
	// key change re-wraps only the ring) and publishes InvalidateKeyRing.
	// ENotFound.
	UpdateDataKeyWrap(ctx context.Context, version int, wrapped []byte) error
	// SealedCounts counts the sealed values per data key version.
	SealedCounts(ctx context.Context) (map[int]int, error)
	// SealedNotVersion returns up to limit sealed values not sealed under
	// version, so a rewrap can resume wherever it stopped.
	SealedNotVersion(ctx context.Context, version, limit int) ([]keybridge.SealedRef, error)
	// ReplaceSealed swaps ref's ciphertext for one sealed under version,
	// only if the stored ciphertext is still ref.Ciphertext (a concurrent
	// write wins). It reports whether it replaced.
	ReplaceSealed(ctx context.Context, ref keybridge.SealedRef, version int, ciphertext []byte) (bool, error)
}

// Providers stores providers and their upstream keys. Every change of a
// provider publishes InvalidateProvider, and every change of an upstream
// key InvalidateProviderKey, in the transaction of the change; only the
// runtime state the gateway keeps itself (last use, cooldowns) is written
// without one.
type Providers interface {
	// CreateProvider inserts p, setting ID (when empty) and times, and
	// publishes InvalidateProvider. EConflict on a used name in the org.
	CreateProvider(ctx context.Context, p *keybridge.Provider) error
	// Provider finds a provider of orgID by ID or name. ENotFound. Inside
	// InTx it locks the row until the transaction ends, so a
	// read-modify-write of a provider is serialized.
	Provider(ctx context.Context, orgID, idOrName string) (*keybridge.Provider, error)
	// ListProviders lists an org's providers sorted by name.
	ListProviders(ctx context.Context, orgID string, page Page) ([]keybridge.Provider, string, error)
	// UpdateProvider writes every mutable field of p and publishes
	// InvalidateProvider. ENotFound, EConflict.
	UpdateProvider(ctx context.Context, p *keybridge.Provider) error
	// DeleteProvider deletes a provider with its keys and credentials and
	// publishes InvalidateProvider, which stands for them too. ENotFound.
	DeleteProvider(ctx context.Context, orgID, id string) error

	// CreateProviderKey inserts k, setting ID (when empty) and times, and
	// publishes InvalidateProviderKey with the provider's org.
	// EConflict on a used fingerprint in the provider, or when the
	// provider already holds keybridge.MaxProviderKeys keys; ENotFound for
	// a missing provider.
	CreateProviderKey(ctx context.Context, k *keybridge.ProviderKey) error
	// ProviderKey finds a key of providerID. ENotFound, also for a key of another provider.
	ProviderKey(ctx context.Context, providerID, id string) (*keybridge.ProviderKey, error)
	// ProviderKeys lists a provider's keys by priority, then creation.
	ProviderKeys(ctx context.Context, providerID string) ([]keybridge.ProviderKey, error)
	// UpdateProviderKey writes name, priority and enabled, and publishes
	// InvalidateProviderKey. It leaves last_used_at and cooldown_until as
	// they are (the gateway's to write) and sets k's to the stored ones.
	// ENotFound.
	UpdateProviderKey(ctx context.Context, k *keybridge.ProviderKey) error
	// DeleteProviderKey deletes a key of providerID and publishes
	// InvalidateProviderKey. ENotFound.
	DeleteProviderKey(ctx context.Context, providerID, id string) error
	// TouchProviderKeys sets last_used_at for many upstream keys at once;
	// it never moves a time backwards. It publishes nothing.
	TouchProviderKeys(ctx context.Context, lastUsed map[string]time.Time) error
	// SetProviderKeyCooldowns sets cooldown_until for many upstream keys at
	// once, clearing it where the time is zero, and touches nothing else
	// of them: not a concurrent admin edit, not updated_at. It publishes
	// nothing, since the gateway that sets cooldowns keeps them itself and
	// stores them for display. Unknown IDs are skipped.
	SetProviderKeyCooldowns(ctx context.Context, until map[string]time.Time) error
}

// Credentials stores users' personal provider keys. Every change publishes
// InvalidateCredential (the user's ID, the credential's org) in the
// transaction of the change.
type Credentials interface {
	// CreateCredential inserts c, setting ID (when empty) and times, and
	// publishes InvalidateCredential. EConflict when the user already has
	// one for the provider.
	CreateCredential(ctx context.Context, c *keybridge.Credential) error
	// Credential finds userID's credential by ID. ENotFound, also for another user's.
	Credential(ctx context.Context, userID, id string) (*keybridge.Credential, error)
	// CredentialFor finds userID's credential for a provider. ENotFound.
	CredentialFor(ctx context.Context, userID, providerID string) (*keybridge.Credential, error)
	// ListCredentials lists userID's credentials, newest first.
	ListCredentials(ctx context.Context, userID string) ([]keybridge.Credential, error)
	// CredentialProviders returns, per user of orgID, the provider IDs they
	// hold personal credentials for (for the member list).
	CredentialProviders(ctx context.Context, orgID string) (map[string][]string, error)
	// UpdateCredential writes the sealed key, fingerprint and hint, and
	// publishes InvalidateCredential. ENotFound.
	UpdateCredential(ctx context.Context, c *keybridge.Credential) error
	// DeleteCredential deletes userID's credential and publishes
	// InvalidateCredential. ENotFound.
	DeleteCredential(ctx context.Context, userID, id string) error
	// TouchCredentials sets last_used_at for many credentials at once; it
	// never moves a time backwards. It publishes nothing. Unknown IDs are
	// skipped.
	TouchCredentials(ctx context.Context, lastUsed map[string]time.Time) error
}

// Projects stores projects and their AI keys.
type Projects interface {
	// CreateProject inserts p, setting ID and times. EConflict on a used name in the org.
	CreateProject(ctx context.Context, p *keybridge.Project) error
	// Project finds a project of orgID. ENotFound.
	Project(ctx context.Context, orgID, id string) (*keybridge.Project, error)
	// ListProjects lists an org's projects by name.
	ListProjects(ctx context.Context, orgID string, page Page) ([]keybridge.Project, string, error)
	// UpdateProject writes name and description. ENotFound, EConflict.
	UpdateProject(ctx context.Context, p *keybridge.Project) error
	// DeleteProject deletes a project; its AI keys are soft-deleted and
	// invalidated. ENotFound.
	DeleteProject(ctx context.Context, orgID, id string) error

	// CreateAIKey inserts k, setting times, and ID unless set (an AWS
	// key's sealed secret is bound to it). ENotFound unless k.ProjectID is
	// an undeleted project of k.OrgID; EConflict on a used key or hash.
	CreateAIKey(ctx context.Context, k *keybridge.AIKey) error
	// AIKey finds an AI key of projectID, deleted or not. ENotFound.
	AIKey(ctx context.Context, projectID, id string) (*keybridge.AIKey, error)
	// AIKeyBySecretHash finds an undeleted AI key by the SHA-256 of its secret. ENotFound.
	AIKeyBySecretHash(ctx context.Context, hash []byte) (*keybridge.AIKey, error)
	// AIKeyByKey finds an undeleted AI key by its public key (kbk_...),
	// for SigV4, which names the key and proves the secret. ENotFound.
	AIKeyByKey(ctx context.Context, key string) (*keybridge.AIKey, error)
	// ListAIKeys lists a project's AI keys newest first.
	ListAIKeys(ctx context.Context, projectID string, includeDeleted bool, page Page) ([]keybridge.AIKey, string, error)
	// UpdateAIKey writes name, limits and allowed models and publishes an
	// invalidation for it. ENotFound, also for a deleted key.
	UpdateAIKey(ctx context.Context, k *keybridge.AIKey) error
	// DeleteAIKey soft-deletes a key at the transaction's time and
	// publishes an invalidation. ENotFound, also when already deleted.
	DeleteAIKey(ctx context.Context, projectID, id string) error
	// TouchAIKeys sets last_used_at for many AI keys at once.
	TouchAIKeys(ctx context.Context, lastUsed map[string]time.Time) error
}

// AuditFilter selects audit events of one org; empty fields do not filter.
type AuditFilter struct {
	OrgID        string
	Action       string
	Actor        string // actor ID or email
	ResourceType string
	ResourceID   string
	Since        time.Time
	Until        time.Time
}

// Audit stores the audit log.
type Audit interface {
	// AppendAuditEvent appends e to its org's hash chain, setting ID (when
	// empty), Seq, PrevHash and Hash. It must run in the transaction of the
	// change it records; chain appends of one org are serialized. Events
	// with no org (a failed login of an unknown user) go to the chain "".
	AppendAuditEvent(ctx context.Context, e *keybridge.AuditEvent) error
	// ListAuditEvents lists events newest first.
	ListAuditEvents(ctx context.Context, f AuditFilter, page Page) ([]keybridge.AuditEvent, string, error)
	// AuditChain calls fn for each event of orgID in chain order, stopping
	// at the first error fn returns.
	AuditChain(ctx context.Context, orgID string, fn func(e *keybridge.AuditEvent) error) error
	// DeleteAuditEventsBefore removes an org's events older than t, keeping
	// the chain verifiable from the oldest remaining event. It returns how
	// many it removed.
	DeleteAuditEventsBefore(ctx context.Context, orgID string, t time.Time) (int, error)
	// AuditBounds returns where orgID's stored chain must start and end;
	// zero bounds for an org with no events. Inside InTx it locks the
	// chain until the transaction ends, as AppendAuditEvent does.
	AuditBounds(ctx context.Context, orgID string) (AuditBounds, error)
	// AuditOrgs lists the org IDs that have a chain, in ID order: deleted
	// orgs (their events outlive them) and the no-org chain "" included,
	// so retention reaches every event.
	AuditOrgs(ctx context.Context) ([]string, error)
}

// AuditBounds pins both ends of an org's chain, so a verifier notices
// events removed from either end, not only altered or missing ones in the
// middle. Walking AuditChain, the first event must have Seq AnchorSeq+1 and
// PrevHash AnchorHash; each next one Seq one more and PrevHash the Hash
// before it; every Hash must equal ComputeHash(PrevHash); and the last
// event must have HeadSeq and HeadHash. No events at all is valid only
// when HeadSeq equals AnchorSeq (retention removed everything). Read the
// bounds before walking: events past HeadSeq were appended since, and the
// walk stops at HeadSeq.
type AuditBounds struct {
	// AnchorSeq and AnchorHash are the Seq and Hash of the newest event
	// DeleteAuditEventsBefore removed (0 and empty before any was).
	AnchorSeq  int64
	AnchorHash []byte
	// HeadSeq and HeadHash are those of the newest event appended.
	HeadSeq  int64
	HeadHash []byte
}

// UsageStore stores gateway usage.
type UsageStore interface {
	// InsertUsage writes a batch of usage records, all or none, naming
	// them by IDs it gives rows of batch. EConflict when the batch is
	// stored already: written before, it committed although its caller
	// never heard so. Nothing is written twice. A retry must be the very
	// batch InsertUsage was given, as it left it (it names the rows): a
	// batch mixing written rows with new ones conflicts whole too.
	InsertUsage(ctx context.Context, batch []keybridge.Usage) error
	// QueryUsage aggregates usage per q. EInvalid for an unknown GroupBy or Bucket.
	QueryUsage(ctx context.Context, q keybridge.UsageQuery) ([]keybridge.UsageGroup, error)
	// DeleteUsageBefore removes usage older than t and returns how many rows went.
	DeleteUsageBefore(ctx context.Context, t time.Time) (int64, error)
}

// InvalidationKind says what kind of cached credential changed.
type InvalidationKind string

// The invalidation kinds.
const (
	InvalidateAPIKey InvalidationKind = "api_key"
	InvalidateAIKey  InvalidationKind = "ai_key"
	// InvalidateUser: the user's memberships changed, so every key of
	// theirs must be re-read.
	InvalidateUser InvalidationKind = "user"
	// InvalidateAll: notifications may have been lost (a reconnect); drop
	// every cached entry.
	InvalidateAll InvalidationKind = "all"
	// InvalidateDeaf: the subscription stopped hearing changes (its
	// connection dropped), so what is published from now on may be
	// missed: drop every cached entry and cache nothing until the next
	// InvalidateAll says it hears everything again.
	InvalidateDeaf InvalidationKind = "deaf"
	// InvalidateKeyRing: the key ring changed (a rotation or a new master
	// key wrap), so every process reloads its data keys. ID is empty.
	InvalidateKeyRing InvalidationKind = "keyring"
	// InvalidateProvider: a provider was created, changed or deleted. ID
	// is the provider's, Org its org's: the gateway re-reads the org's
	// routes (a new provider may take a name that was unknown until now).
	InvalidateProvider InvalidationKind = "provider"
	// InvalidateProviderKey: an upstream key was added, changed or
	// removed. ID is the key's, Org the provider's org.
	InvalidateProviderKey InvalidationKind = "provider_key"
	// InvalidateCredential: a personal credential was added, changed or
	// removed. ID is the user's, Org the credential's org.
	InvalidateCredential InvalidationKind = "credential"
)

// Invalidation tells caches that a credential changed.
type Invalidation struct {
	Kind InvalidationKind `json:"k"`
	ID   string           `json:"id"`
	// Org is the org the changed object belongs to, for the kinds whose
	// caches are kept per org; empty for the others.
	Org string `json:"org,omitempty"`
}

// Notifier spreads invalidations to every process sharing the database.
type Notifier interface {
	// Publish sends inv to every subscriber, this process included. Inside
	// a transaction it is delivered only after commit, and once however
	// often the transaction publishes it.
	Publish(ctx context.Context, inv Invalidation) error
	// Subscribe calls fn for every invalidation until ctx ends. After any
	// gap in delivery (a lost connection) it sends InvalidateAll first.
	// It should also send InvalidateAll once it first hears every change
	// (its LISTEN is in place): a cache that sees it knows that from then
	// on it misses nothing, and stays off until it does. Nothing reaches
	// fn before that first InvalidateAll, and calls of fn do not overlap.
	// When it stops hearing every change (a lost connection) it sends
	// InvalidateDeaf at once, not only InvalidateAll once it is back: a
	// reconnect can take long, or keep failing, and a cache must not
	// answer from entries that a missed revocation made stale meanwhile.
	// fn must return quickly and must not publish: subscribers of a
	// process may share one delivery goroutine.
	Subscribe(ctx context.Context, fn func(Invalidation)) error
}
