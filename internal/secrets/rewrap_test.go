package secrets_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlite"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

func openSQLite(t testing.TB, path string) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), path)
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// sealedRow is one secret stored through the store, with what it holds.
type sealedRow struct {
	ref       keybridge.SealedRef
	plaintext string
}

// seedSecrets stores n providers, each with sealed settings and one sealed
// upstream key, the way the API does: the ID first, then the value sealed
// bound to it. It returns the 2n sealed values.
func seedSecrets(t testing.TB, st store.Store, r *secrets.Ring, n int) []sealedRow {
	t.Helper()
	ctx := context.Background()
	var rows []sealedRow
	err := st.InTx(ctx, func(tx store.Store) error {
		org := &keybridge.Org{Slug: "acme", Name: "Acme"}
		if err := tx.CreateOrg(ctx, org); err != nil {
			return err
		}
		for i := range n {
			p := &keybridge.Provider{ID: uuid.NewString(), OrgID: org.ID, Name: fmt.Sprintf("p%d", i), DisplayName: "P",
				Type: keybridge.ProviderOpenAI, BaseURL: "https://api.openai.com/v1", Enabled: true, KeySource: keybridge.KeySourceOrg}
			settings := fmt.Sprintf(`{"n":%d}`, i)
			ref := keybridge.SealedRef{Table: "providers", Column: "settings", RowID: p.ID}
			p.SettingsSealed, _ = r.Seal([]byte(settings), ref.AssociatedData())
			if err := tx.CreateProvider(ctx, p); err != nil {
				return err
			}
			rows = append(rows, sealedRow{ref, settings})

			k := &keybridge.ProviderKey{ID: uuid.NewString(), ProviderID: p.ID, Hint: "…abcd", Enabled: true}
			secret := fmt.Sprintf("sk-upstream-%d", i)
			kref := keybridge.SealedRef{Table: "provider_keys", Column: "api_key", RowID: k.ID}
			k.Sealed, _ = r.Seal([]byte(secret), kref.AssociatedData())
			k.Fingerprint = r.Fingerprint("provider_key", []byte(secret))
			if err := tx.CreateProviderKey(ctx, k); err != nil {
				return err
			}
			rows = append(rows, sealedRow{kref, secret})
		}
		return nil
	})
	if err != nil {
		t.Fatalf("seed secrets: %v", err)
	}
	return rows
}

// checkSecrets reads every secret back through the store, checks its
// version and opens it.
func checkSecrets(t *testing.T, st store.Store, r *secrets.Ring, rows []sealedRow, wantVersion int) {
	t.Helper()
	stored := storedSecrets(t, st)
	for _, row := range rows {
		ct := stored[row.ref.Table+"/"+row.ref.RowID]
		if v, _ := r.Version(ct); v != wantVersion {
			t.Errorf("%s.%s %s is under version %d, want %d", row.ref.Table, row.ref.Column, row.ref.RowID, v, wantVersion)
		}
		got, err := r.Open(ct, row.ref.AssociatedData())
		if err != nil || string(got) != row.plaintext {
			t.Errorf("%s.%s %s opens to %q, %v; want %q", row.ref.Table, row.ref.Column, row.ref.RowID, got, err, row.plaintext)
		}
	}
}

// storedSecrets returns the sealed values of org acme, keyed by
// "table/rowID".
func storedSecrets(t *testing.T, st store.Store) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	ps, _, err := st.ListProviders(ctx, orgOf(t, st), store.Page{Limit: store.MaxLimit})
	if err != nil {
		t.Fatalf("ListProviders: %v", err)
	}
	out := map[string][]byte{}
	for _, p := range ps {
		out["providers/"+p.ID] = p.SettingsSealed
		keys, err := st.ProviderKeys(ctx, p.ID)
		if err != nil {
			t.Fatalf("ProviderKeys: %v", err)
		}
		for _, k := range keys {
			out["provider_keys/"+k.ID] = k.Sealed
		}
	}
	return out
}

func orgOf(t *testing.T, st store.Store) string {
	t.Helper()
	o, err := st.Org(context.Background(), "acme")
	if err != nil {
		t.Fatalf("Org: %v", err)
	}
	return o.ID
}

func statusOf(t *testing.T, r *secrets.Ring) map[int]int {
	t.Helper()
	status, err := r.Status(context.Background())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	counts := map[int]int{}
	for _, k := range status {
		counts[k.Version] = k.Sealed
	}
	return counts
}

func TestRewrap(t *testing.T) {
	for _, e := range storetest.Engines() {
		t.Run(e.Name, func(t *testing.T) { testRewrap(t, e.New(t)) })
	}
}

func testRewrap(t *testing.T, st store.Store) {
	ctx := context.Background()
	r := openRing(t, st, masterKey(1))
	rows := seedSecrets(t, st, r, 120) // 240 values: three batches
	if got, want := statusOf(t, r), map[int]int{1: 240}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Status before rotation = %v, want %v", got, want)
	}
	if _, err := r.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	checkSecrets(t, st, r, rows, 1)

	// Interrupt after the first batch, as a Ctrl-C would.
	cctx, cancel := context.WithCancel(ctx)
	var calls []int
	n, err := r.Rewrap(cctx, func(done int) {
		calls = append(calls, done)
		cancel()
	})
	if !errors.Is(err, context.Canceled) || n != secrets.RewrapBatch {
		t.Fatalf("interrupted Rewrap = %d, %v; want %d, context.Canceled", n, err, secrets.RewrapBatch)
	}
	if got, want := statusOf(t, r), map[int]int{1: 140, 2: 100}; !reflect.DeepEqual(got, want) {
		t.Errorf("Status after an interrupted rewrap = %v, want %v", got, want)
	}
	if events, _, _ := st.ListAuditEvents(ctx, store.AuditFilter{Action: "keyring.rewrap"}, store.Page{Limit: 10}); len(events) != 0 {
		t.Errorf("an interrupted rewrap wrote %d audit events, want none", len(events))
	}

	// Running it again finishes the job.
	calls = nil
	n, err = r.Rewrap(ctx, func(done int) { calls = append(calls, done) })
	if err != nil || n != 140 {
		t.Fatalf("resumed Rewrap = %d, %v; want 140, nil", n, err)
	}
	if want := []int{100, 140}; !reflect.DeepEqual(calls, want) {
		t.Errorf("progress calls = %v, want %v", calls, want)
	}
	if got, want := statusOf(t, r), map[int]int{1: 0, 2: 240}; !reflect.DeepEqual(got, want) {
		t.Errorf("Status after rewrap = %v, want %v", got, want)
	}
	checkSecrets(t, st, r, rows, 2)
	wantAudit(t, st, "keyring.rewrap", "2")

	// Nothing left: a third run moves nothing.
	if n, err := r.Rewrap(ctx, nil); err != nil || n != 0 {
		t.Errorf("Rewrap with nothing to do = %d, %v; want 0, nil", n, err)
	}
}

// TestRewrapFollowsNewerPrimary: a ring that has not heard of a rotation
// elsewhere does not move values back under its old primary.
func TestRewrapFollowsNewerPrimary(t *testing.T) {
	ctx := context.Background()
	path := t.TempDir() + "/keybridge.db"
	st1, st2 := openSQLite(t, path), openSQLite(t, path)
	r1 := openRing(t, st1, masterKey(1))
	r2 := openRing(t, st2, masterKey(1))
	rows := seedSecrets(t, st1, r1, 5)
	if _, err := r1.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := r2.Rewrap(ctx, nil); err != nil || n != len(rows) {
		t.Fatalf("Rewrap on the ring that missed the rotation = %d, %v; want %d, nil", n, err, len(rows))
	}
	if got, want := statusOf(t, r1), map[int]int{1: 0, 2: len(rows)}; !reflect.DeepEqual(got, want) {
		t.Errorf("Status = %v, want %v", got, want)
	}
}

// TestRewrapStopsAtUnopenable: a value that does not open (moved to another
// row by hand) stops the rewrap with an error naming the row.
func TestRewrapStopsAtUnopenable(t *testing.T) {
	ctx := context.Background()
	st := storetest.SQLite(t)
	r := openRing(t, st, masterKey(1))
	rows := seedSecrets(t, st, r, 3)
	// Give provider 0 the settings of provider 1: same table and column,
	// wrong row.
	p0, _ := st.Provider(ctx, orgOf(t, st), rows[0].ref.RowID)
	p1, _ := st.Provider(ctx, orgOf(t, st), rows[2].ref.RowID)
	p0.SettingsSealed = p1.SettingsSealed
	if err := st.UpdateProvider(ctx, p0); err != nil {
		t.Fatalf("UpdateProvider: %v", err)
	}
	if _, err := r.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := r.Rewrap(ctx, nil)
	if !errors.Is(err, secrets.ErrInvalidCiphertext) {
		t.Fatalf("Rewrap = %v, want ErrInvalidCiphertext", err)
	}
	if want := rows[0].ref.RowID; !strings.Contains(err.Error(), want) {
		t.Errorf("Rewrap error %q does not name row %s", err, want)
	}
}
