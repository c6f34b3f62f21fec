package keybridge

import (
	"encoding/json"
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

// Permission is one grant of SPEC §2. Permissions is a set of them, kept as
// a bit set so that intersecting a key's permissions with its owner's role
// costs one AND on the request path.
type Permission uint32

// The permissions, in the order of SPEC §2.
const (
	PermProvidersRead Permission = 1 << iota
	PermProvidersWrite
	PermProjectsRead
	PermProjectsWrite
	PermMembersRead
	PermMembersWrite
	PermAuditRead
	PermUsageRead
	PermGatewayInvoke
	PermAPIKeysWrite
	permEnd
)

var permissionNames = []string{
	"providers:read", "providers:write", "projects:read", "projects:write",
	"members:read", "members:write", "audit:read", "usage:read",
	"gateway:invoke", "api_keys:write",
}

// Permissions is a set of Permission values.
type Permissions = Permission

// AllPermissions holds every permission.
const AllPermissions = permEnd - 1

// Has reports whether every permission of q is in p.
func (p Permission) Has(q Permission) bool { return p&q == q }

// Names returns the permission strings of p in enum order.
func (p Permission) Names() []string {
	names := make([]string, 0, bits.OnesCount32(uint32(p)))
	for i, n := range permissionNames {
		if p&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return names
}

// String returns the permissions as a space-separated list.
func (p Permission) String() string { return strings.Join(p.Names(), " ") }

// ParsePermission returns the permission named s.
func ParsePermission(s string) (Permission, bool) {
	i := slices.Index(permissionNames, s)
	if i < 0 {
		return 0, false
	}
	return 1 << i, true
}

// ParsePermissions turns permission strings into a set; an unknown name is
// an invalid_argument error on field "permissions".
func ParsePermissions(names []string) (Permission, error) {
	var p Permission
	for _, n := range names {
		q, ok := ParsePermission(n)
		if !ok {
			return 0, FieldError("permissions", fmt.Sprintf("unknown permission %q", n))
		}
		p |= q
	}
	return p, nil
}

// MarshalJSON encodes the set as an array of strings.
func (p Permission) MarshalJSON() ([]byte, error) { return json.Marshal(p.Names()) }

// UnmarshalJSON decodes an array of permission strings.
func (p *Permission) UnmarshalJSON(b []byte) error {
	var names []string
	if err := json.Unmarshal(b, &names); err != nil {
		return FieldError("permissions", "must be an array of strings")
	}
	q, err := ParsePermissions(names)
	if err != nil {
		return err
	}
	*p = q
	return nil
}

// Role is a member's role in an org.
type Role string

// The roles, weakest first.
const (
	RoleMember Role = "member"
	RoleAdmin  Role = "admin"
	RoleOwner  Role = "owner"
)

const memberPermissions = PermProvidersRead | PermProjectsRead | PermMembersRead | PermGatewayInvoke

// Permissions returns what the role grants. Owners hold the same
// permissions as admins; what only owners may do (delete the org, grant or
// remove owner) is checked on the role itself.
func (r Role) Permissions() Permission {
	switch r {
	case RoleMember:
		return memberPermissions
	case RoleAdmin, RoleOwner:
		return AllPermissions
	}
	return 0
}

// MayGrant reports whether a member with role r may give role g to
// someone, by inviting them or changing their role: it takes
// members:write, and only owners grant owner. An invitation is checked
// again when it is accepted, against the current role of whoever last
// set its role.
func (r Role) MayGrant(g Role) bool {
	return r.Permissions().Has(PermMembersWrite) && g.Valid() && (g != RoleOwner || r == RoleOwner)
}

// Valid reports whether r is one of the three roles.
func (r Role) Valid() bool { return r == RoleMember || r == RoleAdmin || r == RoleOwner }
