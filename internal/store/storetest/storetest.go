// Package storetest is the one conformance suite every store driver
// passes, and the helpers that give tests a fresh real store of each engine.
package storetest

import (
	"testing"

	"github.com/keybridge/keybridge/internal/store"
)

// Factory returns a fresh, migrated, empty store, closed when t ends.
type Factory func(t testing.TB) store.Store

// Run runs the whole conformance suite against stores from newStore.
func Run(t *testing.T, newStore Factory) {
	for _, area := range []struct {
		name string
		run  func(*testing.T, Factory)
	}{
		{"Meta", testMeta},
		{"TakeMeta", testTakeMeta},
		{"Identity", testIdentity},
		{"APIKeys", testAPIKeys},
		{"KeyRing", testKeyRing},
		{"Audit", testAudit},
		{"Notifier", testNotifier},
		{"Providers", testProviders},
		{"Credentials", testCredentials},
		{"Projects", testProjects},
		{"Usage", testUsage},
		{"AllowedModels", testAllowedModels},
	} {
		t.Run(area.name, func(t *testing.T) { area.run(t, newStore) })
	}
}
