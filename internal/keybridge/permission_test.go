package keybridge_test

import (
	"slices"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

func TestRoleMayGrant(t *testing.T) {
	roles := []keybridge.Role{keybridge.RoleMember, keybridge.RoleAdmin, keybridge.RoleOwner, "", "root"}
	want := map[keybridge.Role][]keybridge.Role{
		keybridge.RoleAdmin: {keybridge.RoleMember, keybridge.RoleAdmin},
		keybridge.RoleOwner: {keybridge.RoleMember, keybridge.RoleAdmin, keybridge.RoleOwner},
	}
	for _, r := range roles {
		for _, g := range roles {
			w := slices.Contains(want[r], g)
			if got := r.MayGrant(g); got != w {
				t.Errorf("Role(%q).MayGrant(%q) = %v, want %v", r, g, got, w)
			}
		}
	}
}
