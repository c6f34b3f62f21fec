package secrets_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/secrets"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// masterKey returns a fixed 32-byte master key made of b.
func masterKey(b byte) []byte { return bytes.Repeat([]byte{b}, secrets.MasterKeySize) }

func openRing(t testing.TB, st store.Store, master []byte) *secrets.Ring {
	t.Helper()
	r, err := secrets.OpenRing(context.Background(), st, master, secrets.Options{})
	if err != nil {
		t.Fatalf("OpenRing: %v", err)
	}
	return r
}

func dataKeys(t testing.TB, st store.Store) []keybridge.DataKey {
	t.Helper()
	keys, err := st.DataKeys(context.Background())
	if err != nil {
		t.Fatalf("DataKeys: %v", err)
	}
	return keys
}

var adA = keybridge.AssociatedData("provider_keys", "api_key", "row-a")

func TestSealOpen(t *testing.T) {
	r := openRing(t, storetest.SQLite(t), masterKey(1))
	for _, tt := range []struct {
		name      string
		plaintext []byte
	}{
		{"empty", []byte{}},
		{"provider key", []byte("sk-proj-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghij")},
		{"binary", []byte{0, 1, 2, 255, 254, 0}},
		{"64 KiB", bytes.Repeat([]byte("settings"), 8<<10)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ct, err := r.Seal(tt.plaintext, adA)
			if err != nil {
				t.Fatalf("Seal: %v", err)
			}
			if len(tt.plaintext) > 4 && bytes.Contains(ct, tt.plaintext) {
				t.Errorf("ciphertext contains the plaintext")
			}
			got, err := r.Open(ct, adA)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !bytes.Equal(got, tt.plaintext) {
				t.Errorf("Open(Seal(p)) = %q, want %q", got, tt.plaintext)
			}
			if v, err := r.Version(ct); err != nil || v != 1 {
				t.Errorf("Version = %d, %v; want 1, nil", v, err)
			}
			again, _ := r.Seal(tt.plaintext, adA)
			if bytes.Equal(again, ct) {
				t.Errorf("two seals of one plaintext are equal; the nonce must be fresh")
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	r := openRing(t, storetest.SQLite(t), masterKey(1))
	ct, err := r.Seal([]byte("sk-ant-api03-secret"), adA)
	if err != nil {
		t.Fatal(err)
	}
	withVersion := func(v uint32) []byte {
		c := bytes.Clone(ct)
		binary.BigEndian.PutUint32(c[1:5], v)
		return c
	}
	for _, tt := range []struct {
		name string
		ct   []byte
		ad   []byte
		want error
	}{
		{"other row", ct, keybridge.AssociatedData("provider_keys", "api_key", "row-b"), secrets.ErrInvalidCiphertext},
		{"other column", ct, keybridge.AssociatedData("provider_keys", "settings", "row-a"), secrets.ErrInvalidCiphertext},
		{"other table", ct, keybridge.AssociatedData("user_credentials", "api_key", "row-a"), secrets.ErrInvalidCiphertext},
		{"no associated data", ct, nil, secrets.ErrInvalidCiphertext},
		{"truncated", ct[:len(ct)-1], adA, secrets.ErrInvalidCiphertext},
		{"too short", ct[:20], adA, secrets.ErrInvalidCiphertext},
		{"extended", append(bytes.Clone(ct), 0), adA, secrets.ErrInvalidCiphertext},
		{"empty", nil, adA, secrets.ErrInvalidCiphertext},
		{"unknown format", append([]byte{2}, ct[1:]...), adA, secrets.ErrInvalidCiphertext},
		{"version 0", withVersion(0), adA, secrets.ErrInvalidCiphertext},
		{"unknown version", withVersion(7), adA, secrets.ErrUnknownVersion},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.Open(tt.ct, tt.ad)
			if !errors.Is(err, tt.want) {
				t.Errorf("Open = %q, %v; want error %v", got, err, tt.want)
			}
		})
	}
}

// TestOpenTamper flips each bit of a sealed value: none may open.
func TestOpenTamper(t *testing.T) {
	r := openRing(t, storetest.SQLite(t), masterKey(1))
	ct, err := r.Seal([]byte("sk-0123456789"), adA)
	if err != nil {
		t.Fatal(err)
	}
	for i := range ct {
		for bit := range 8 {
			c := bytes.Clone(ct)
			c[i] ^= 1 << bit
			if got, err := r.Open(c, adA); err == nil {
				t.Fatalf("Open with byte %d bit %d flipped = %q, nil; want an error", i, bit, got)
			}
		}
	}
}

func TestWrongMasterKey(t *testing.T) {
	ctx := context.Background()
	st := storetest.SQLite(t)
	r := openRing(t, st, masterKey(1))
	if _, err := r.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	before := dataKeys(t, st)

	_, err := secrets.OpenRing(ctx, st, masterKey(2), secrets.Options{})
	if !errors.Is(err, secrets.ErrWrongMasterKey) {
		t.Fatalf("OpenRing(wrong key) = %v, want ErrWrongMasterKey", err)
	}
	if after := dataKeys(t, st); !reflect.DeepEqual(after, before) {
		t.Errorf("data keys changed by a refused master key:\n got %+v\nwant %+v", after, before)
	}
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := secrets.OpenRing(ctx, st, make([]byte, n), secrets.Options{}); err == nil {
			t.Errorf("OpenRing(%d-byte master key) = nil error, want one", n)
		}
	}
	// The right key still opens it.
	openRing(t, st, masterKey(1))
}

// TestOpenRingConcurrently starts several replicas on one empty database at
// once: they must agree on one version 1.
func TestOpenRingConcurrently(t *testing.T) {
	for _, e := range storetest.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			stores := []store.Store{}
			if e.Name == "postgres" {
				first, open := storetest.SharedPostgres(t)
				stores = append(stores, first, open(), open())
			} else {
				st := e.New(t)
				stores = append(stores, st, st, st)
			}
			rings := make([]*secrets.Ring, len(stores))
			errs := make([]error, len(stores))
			var wg sync.WaitGroup
			for i, st := range stores {
				wg.Go(func() {
					rings[i], errs[i] = secrets.OpenRing(context.Background(), st, masterKey(1), secrets.Options{})
				})
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("OpenRing #%d: %v", i, err)
				}
			}
			if keys := dataKeys(t, stores[0]); len(keys) != 1 || keys[0].Version != 1 || !keys[0].Primary {
				t.Fatalf("data keys = %+v, want one primary version 1", keys)
			}
			ct, _ := rings[0].Seal([]byte("x"), adA)
			for i, r := range rings[1:] {
				if _, err := r.Open(ct, adA); err != nil {
					t.Errorf("ring #%d Open of ring #0's value: %v", i+1, err)
				}
			}
		})
	}
}

func TestRotate(t *testing.T) {
	ctx := context.Background()
	st := storetest.SQLite(t)
	r := openRing(t, st, masterKey(1))
	// stale is another ring on the same database that does not hear of
	// the rotation (no Run): it must still open values of the new key.
	stale := openRing(t, st, masterKey(1))
	old, _ := r.Seal([]byte("sealed under 1"), adA)

	v, err := r.Rotate(ctx)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if v != 2 || r.Primary() != 2 {
		t.Fatalf("Rotate = %d, Primary = %d; want 2, 2", v, r.Primary())
	}
	ct, _ := r.Seal([]byte("sealed under 2"), adA)
	if got, _ := r.Version(ct); got != 2 {
		t.Errorf("Version of a value sealed after rotation = %d, want 2", got)
	}
	for _, tt := range []struct {
		name string
		r    *secrets.Ring
		ct   []byte
		want string
	}{
		{"old value", r, old, "sealed under 1"},
		{"new value", r, ct, "sealed under 2"},
		{"new value in a stale ring", stale, ct, "sealed under 2"},
	} {
		got, err := tt.r.Open(tt.ct, adA)
		if err != nil || string(got) != tt.want {
			t.Errorf("%s: Open = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}

	keys := dataKeys(t, st)
	if len(keys) != 2 || keys[0].Primary || !keys[1].Primary {
		t.Errorf("data keys = %+v, want versions 1 and 2 with 2 primary", keys)
	}
	wantAudit(t, st, "keyring.rotate", "2")
}

// wantAudit checks the system chain holds one event of action on the
// keyring resource id.
func wantAudit(t *testing.T, st store.Store, action, id string) {
	t.Helper()
	events, _, err := st.ListAuditEvents(context.Background(), store.AuditFilter{OrgID: "", Action: action}, store.Page{Limit: 10})
	if err != nil {
		t.Fatalf("ListAuditEvents: %v", err)
	}
	if len(events) != 1 || events[0].Resource.Type != "keyring" || events[0].Resource.ID != id {
		t.Errorf("audit events %q = %+v, want one on keyring %q", action, events, id)
	}
}

func TestFingerprint(t *testing.T) {
	ctx := context.Background()
	st := storetest.SQLite(t)
	r := openRing(t, st, masterKey(1))
	key := []byte("sk-proj-abc")
	fp := r.Fingerprint("provider_key", key)
	if len(fp) != 32 {
		t.Fatalf("len(Fingerprint) = %d, want 32", len(fp))
	}
	for _, tt := range []struct {
		name    string
		purpose string
		data    []byte
	}{
		{"other purpose", "credential", key},
		{"other data", "provider_key", []byte("sk-proj-abd")},
		{"purpose and data shifted", "provider_keys", []byte("k-proj-abc")},
	} {
		if bytes.Equal(r.Fingerprint(tt.purpose, tt.data), fp) {
			t.Errorf("%s: fingerprint equals the original", tt.name)
		}
	}
	if other := openRing(t, storetest.SQLite(t), masterKey(1)); bytes.Equal(other.Fingerprint("provider_key", key), fp) {
		t.Errorf("two databases' rings give the same fingerprint; it must be keyed by the ring")
	}

	// Stable across rotation, a master key change and a restart.
	if _, err := r.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if got := r.Fingerprint("provider_key", key); !bytes.Equal(got, fp) {
		t.Errorf("fingerprint changed by rotation")
	}
	if err := r.ChangeMaster(ctx, masterKey(2)); err != nil {
		t.Fatalf("ChangeMaster: %v", err)
	}
	if got := openRing(t, st, masterKey(2)).Fingerprint("provider_key", key); !bytes.Equal(got, fp) {
		t.Errorf("fingerprint changed by a master key change and reopening")
	}
}

func TestChangeMaster(t *testing.T) {
	ctx := context.Background()
	st := storetest.SQLite(t)
	r := openRing(t, st, masterKey(1))
	old, _ := r.Seal([]byte("before"), adA)
	if _, err := r.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	newer, _ := r.Seal([]byte("after"), adA)
	before := dataKeys(t, st)

	if err := r.ChangeMaster(ctx, []byte("short")); err == nil {
		t.Fatal("ChangeMaster(5 bytes) = nil, want an error")
	}
	if err := r.ChangeMaster(ctx, masterKey(2)); err != nil {
		t.Fatalf("ChangeMaster: %v", err)
	}
	after := dataKeys(t, st)
	if len(after) != len(before) {
		t.Fatalf("ChangeMaster changed the number of data keys: %d, want %d", len(after), len(before))
	}
	for i := range after {
		if after[i].Version != before[i].Version || after[i].Primary != before[i].Primary || bytes.Equal(after[i].Wrapped, before[i].Wrapped) {
			t.Errorf("data key %d: after %+v, before %+v; want only Wrapped changed", before[i].Version, after[i], before[i])
		}
	}
	if _, err := secrets.OpenRing(ctx, st, masterKey(1), secrets.Options{}); !errors.Is(err, secrets.ErrWrongMasterKey) {
		t.Errorf("OpenRing(old master) = %v, want ErrWrongMasterKey", err)
	}
	reopened := openRing(t, st, masterKey(2))
	for _, ring := range []*secrets.Ring{r, reopened} {
		for ct, want := range map[*[]byte]string{&old: "before", &newer: "after"} {
			if got, err := ring.Open(*ct, adA); err != nil || string(got) != want {
				t.Errorf("Open after ChangeMaster = %q, %v; want %q", got, err, want)
			}
		}
	}
	// Rotation keeps working under the new master key.
	if _, err := r.Rotate(ctx); err != nil {
		t.Errorf("Rotate after ChangeMaster: %v", err)
	}
	openRing(t, st, masterKey(2))
	wantAudit(t, st, "keyring.change_master", "master")
}

// TestConcurrentUse seals and opens from many goroutines while the ring
// rotates; run with -race.
func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	r := openRing(t, storetest.SQLite(t), masterKey(1))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			ad := keybridge.AssociatedData("t", "c", fmt.Sprint(g))
			for i := range 200 {
				want := fmt.Sprintf("secret %d/%d", g, i)
				ct, err := r.Seal([]byte(want), ad)
				if err == nil {
					var got []byte
					got, err = r.Open(ct, ad)
					if err == nil && string(got) != want {
						err = fmt.Errorf("Open = %q, want %q", got, want)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	for range 3 {
		if _, err := r.Rotate(ctx); err != nil {
			t.Errorf("Rotate: %v", err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestRunReloadsOnInterval: a process that hears no notification (another
// SQLite handle, as a second process would be) still catches up with a
// rotation on its reload interval.
func TestRunReloadsOnInterval(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	path := t.TempDir() + "/keybridge.db"
	st1, st2 := openSQLite(t, path), openSQLite(t, path)
	r1 := openRing(t, st1, masterKey(1))
	r2, err := secrets.OpenRing(ctx, st2, masterKey(1), secrets.Options{ReloadInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() { done <- r2.Run(ctx) }()
	if _, err := r1.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	waitPrimary(t, r2, 2, 2*time.Second)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v after cancel, want nil", err)
	}
}

// TestRunFollowsRotation: rings on two replicas of one database; a rotation
// on one reaches the other through notifications within a second.
func TestRunFollowsRotation(t *testing.T) {
	for _, e := range storetest.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var st1, st2 store.Store
			if e.Name == "postgres" {
				var open func() store.Store
				st1, open = storetest.SharedPostgres(t)
				st2 = open()
			} else {
				// One process, two rings: notifications are in-process.
				st1 = e.New(t)
				st2 = st1
			}
			r1 := openRing(t, st1, masterKey(1))
			// The interval is long so only a notification can explain a
			// prompt reload.
			r2, err := secrets.OpenRing(ctx, st2, masterKey(1), secrets.Options{ReloadInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			go r2.Run(ctx)
			// Let Run subscribe (LISTEN) before rotating.
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			if _, err := r1.Rotate(ctx); err != nil {
				t.Fatalf("Rotate: %v", err)
			}
			waitPrimary(t, r2, 2, time.Second)
			t.Logf("%s: the other ring seals under version 2 after %v", e.Name, time.Since(start).Round(time.Millisecond))
		})
	}
}

// waitPrimary waits until r seals under version want.
func waitPrimary(t *testing.T, r *secrets.Ring, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ct, _ := r.Seal([]byte("x"), adA)
		v, _ := r.Version(ct)
		if v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ring still seals under version %d after %v, want %d", v, within, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func BenchmarkSeal(b *testing.B) {
	r := openRing(b, storetest.SQLite(b), masterKey(1))
	secret := bytes.Repeat([]byte("k"), 64)
	b.SetBytes(int64(len(secret)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Seal(secret, adA); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	r := openRing(b, storetest.SQLite(b), masterKey(1))
	secret := bytes.Repeat([]byte("k"), 64)
	ct, _ := r.Seal(secret, adA)
	b.SetBytes(int64(len(secret)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Open(ct, adA); err != nil {
			b.Fatal(err)
		}
	}
}
