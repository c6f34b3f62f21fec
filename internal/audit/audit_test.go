package audit_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

func TestDiff(t *testing.T) {
	type thing struct {
		Name     string            `json:"name"`
		Enabled  bool              `json:"enabled"`
		Limit    int64             `json:"limit"`
		APIKey   string            `json:"api_key,omitempty"`
		Token    string            `json:"client_token,omitempty"`
		Settings map[string]string `json:"settings,omitempty"`
	}
	for _, tc := range []struct {
		name          string
		before, after any
		secret        []string
		want          map[string]keybridge.Change
	}{
		{"no change", thing{Name: "a"}, thing{Name: "a"}, nil, nil},
		{"one field", thing{Name: "a", Limit: 5}, thing{Name: "b", Limit: 5}, nil,
			map[string]keybridge.Change{"name": {Old: "a", New: "b"}}},
		{"creation", nil, thing{Name: "a", Limit: 5}, nil, map[string]keybridge.Change{
			"name": {Old: nil, New: "a"}, "enabled": {Old: nil, New: false}, "limit": {Old: nil, New: json.Number("5")}}},
		{"deletion", map[string]any{"name": "a"}, nil, nil, map[string]keybridge.Change{"name": {Old: "a", New: nil}}},
		{"large integers stay exact", thing{Limit: 1 << 60}, thing{Limit: 1<<60 + 1}, nil,
			map[string]keybridge.Change{"limit": {Old: json.Number("1152921504606846976"), New: json.Number("1152921504606846977")}}},
		{"secret by name", thing{APIKey: "sk-old"}, thing{APIKey: "sk-new"}, nil,
			map[string]keybridge.Change{"api_key": {Old: keybridge.Redacted, New: keybridge.Redacted}}},
		{"secret set from nothing", thing{}, thing{APIKey: "sk-new"}, nil,
			map[string]keybridge.Change{"api_key": {Old: nil, New: keybridge.Redacted}}},
		{"secret named by the caller", thing{Token: "t1"}, thing{Token: "t2"}, []string{"client_token"},
			map[string]keybridge.Change{"client_token": {Old: keybridge.Redacted, New: keybridge.Redacted}}},
		{"nested secret by path", thing{Settings: map[string]string{"region": "a", "access_key_id": "AKIA1"}},
			thing{Settings: map[string]string{"region": "b", "access_key_id": "AKIA2"}}, []string{"settings.access_key_id"},
			map[string]keybridge.Change{"settings": {
				Old: map[string]any{"region": "a", "access_key_id": keybridge.Redacted},
				New: map[string]any{"region": "b", "access_key_id": keybridge.Redacted}}}},
		{"nested secret by name", thing{Settings: map[string]string{"access_key_secret": "x"}},
			thing{Settings: map[string]string{"access_key_secret": "y"}}, nil,
			map[string]keybridge.Change{"settings": {
				Old: map[string]any{"access_key_secret": keybridge.Redacted},
				New: map[string]any{"access_key_secret": keybridge.Redacted}}}},
		{"Secret type", map[string]any{"password": keybridge.NewSecret("hunter2")}, map[string]any{"password": keybridge.NewSecret("hunter3")}, nil,
			nil}, // both encode as [redacted]: nothing to tell
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := audit.Diff(tc.before, tc.after, tc.secret...)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Diff = %#v, want %#v", got, tc.want)
			}
			b, _ := json.Marshal(got)
			for _, plain := range []string{"sk-old", "sk-new", "AKIA1", "AKIA2", "hunter2", `"t1"`, `"t2"`, `"x"`, `"y"`} {
				if strings.Contains(string(b), plain) {
					t.Errorf("Diff output %s holds the secret %s", b, plain)
				}
			}
		})
	}
}

func TestRedactHandBuiltChanges(t *testing.T) {
	got := audit.Redact(map[string]keybridge.Change{
		"password": {Old: "", New: "s3cret"},
		"Token":    {Old: "abc", New: nil},
		"name":     {Old: "a", New: "b"},
	})
	want := map[string]keybridge.Change{
		"password": {Old: "", New: keybridge.Redacted},
		"Token":    {Old: keybridge.Redacted, New: nil},
		"name":     {Old: "a", New: "b"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Redact = %#v, want %#v", got, want)
	}
}

// chain appends n events to org through Record, as the API does, and
// returns them in chain order.
func chain(t *testing.T, st store.Store, org string, n int) []*keybridge.AuditEvent {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		err := st.InTx(ctx, func(tx store.Store) error {
			return audit.Record(ctx, tx, org, "project.update", keybridge.Resource{Type: "project", ID: "p1", Name: "web"},
				map[string]keybridge.Change{"name": {Old: fmt.Sprint("v", i), New: fmt.Sprint("v", i+1)}, "limit": {Old: int64(1) << 62, New: i}})
		})
		if err != nil {
			t.Fatalf("Record = %v", err)
		}
	}
	var events []*keybridge.AuditEvent
	if err := st.AuditChain(ctx, org, func(e *keybridge.AuditEvent) error { events = append(events, e); return nil }); err != nil {
		t.Fatalf("AuditChain = %v", err)
	}
	if len(events) < n {
		t.Fatalf("chain of %s has %d events, want at least %d", org, len(events), n)
	}
	return events
}

func TestVerify(t *testing.T) {
	ctx := context.Background()
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			st := eng.New(t)
			raw := storetest.RawOf(t, st)
			for _, tc := range []struct {
				name string
				// tamper changes the stored chain of org (five events)
				// and returns the bad event Verify must name.
				tamper func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent
				events int64
			}{
				{"intact", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					return audit.BadEvent{}
				}, 5},
				{"field updated", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `UPDATE audit_events SET actor_email = 'someone-else@example.com' WHERE id = ?`, ev[2].ID)
					return audit.BadEvent{ID: ev[2].ID, Seq: 3}
				}, 2},
				{"changes updated", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `UPDATE audit_events SET changes = '{}' WHERE id = ?`, ev[1].ID)
					return audit.BadEvent{ID: ev[1].ID, Seq: 2}
				}, 1},
				{"changes made unreadable", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `UPDATE audit_events SET changes = 'not json' WHERE id = ?`, ev[2].ID)
					return audit.BadEvent{ID: ev[2].ID, Seq: 3}
				}, 2},
				{"changes of another shape", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `UPDATE audit_events SET changes = '{"name": 1}' WHERE id = ?`, ev[1].ID)
					return audit.BadEvent{ID: ev[1].ID, Seq: 2}
				}, 1},
				{"time made unreadable", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					if raw.Postgres {
						// A timestamptz column holds only times: move it.
						raw.Exec(t, `UPDATE audit_events SET time = time - interval '1 day' WHERE id = ?`, ev[3].ID)
					} else {
						raw.Exec(t, `UPDATE audit_events SET time = 'yesterday' WHERE id = ?`, ev[3].ID)
					}
					return audit.BadEvent{ID: ev[3].ID, Seq: 4}
				}, 3},
				{"seq made unreadable", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					if raw.Postgres {
						// A bigint column holds only numbers: move it.
						raw.Exec(t, `UPDATE audit_events SET seq = 40 WHERE id = ?`, ev[3].ID)
					} else {
						raw.Exec(t, `UPDATE audit_events SET seq = 'four' WHERE id = ?`, ev[3].ID)
					}
					return audit.BadEvent{Seq: 4}
				}, 3},
				{"middle row deleted", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `DELETE FROM audit_events WHERE id = ?`, ev[2].ID)
					return audit.BadEvent{Seq: 3}
				}, 2},
				{"newest row deleted", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `DELETE FROM audit_events WHERE id = ?`, ev[4].ID)
					return audit.BadEvent{Seq: 5}
				}, 4},
				{"oldest row deleted", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `DELETE FROM audit_events WHERE id = ?`, ev[0].ID)
					return audit.BadEvent{Seq: 1}
				}, 0},
				{"two rows swapped", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `UPDATE audit_events SET seq = -1 WHERE id = ?`, ev[1].ID)
					raw.Exec(t, `UPDATE audit_events SET seq = 2 WHERE id = ?`, ev[2].ID)
					raw.Exec(t, `UPDATE audit_events SET seq = 3 WHERE id = ?`, ev[1].ID)
					return audit.BadEvent{ID: ev[2].ID, Seq: 2}
				}, 1},
				{"hash rewritten to match the altered content", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					e := *ev[4]
					e.Action = "project.delete"
					raw.Exec(t, `UPDATE audit_events SET action = ?, hash = ? WHERE id = ?`, e.Action, e.ComputeHash(e.PrevHash), e.ID)
					return audit.BadEvent{ID: ev[4].ID, Seq: 5}
				}, 4},
				{"hash recomputed in the middle", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					e := *ev[2]
					e.Resource.Name = "innocent"
					raw.Exec(t, `UPDATE audit_events SET resource_name = ?, hash = ? WHERE id = ?`, e.Resource.Name, e.ComputeHash(e.PrevHash), e.ID)
					return audit.BadEvent{ID: ev[2].ID, Seq: 3}
				}, 2},
				{"prev hash rewritten", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `UPDATE audit_events SET prev_hash = ? WHERE id = ?`, ev[0].Hash, ev[2].ID)
					return audit.BadEvent{ID: ev[2].ID, Seq: 3}
				}, 2},
				{"first event's link rewritten", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					e := *ev[0]
					e.PrevHash = []byte("not the start of a chain")
					raw.Exec(t, `UPDATE audit_events SET prev_hash = ?, hash = ? WHERE id = ?`, e.PrevHash, e.ComputeHash(e.PrevHash), e.ID)
					return audit.BadEvent{ID: ev[0].ID, Seq: 1}
				}, 0},
				{"event forged past the head", func(t *testing.T, org string, ev []*keybridge.AuditEvent) audit.BadEvent {
					raw.Exec(t, `INSERT INTO audit_events (id, org_id, seq, time, actor_type, actor_id, action, resource_type, resource_id, prev_hash, hash)
						SELECT 'forged', org_id, 6, time, actor_type, actor_id, action, resource_type, resource_id, hash, hash FROM audit_events WHERE id = ?`, ev[4].ID)
					return audit.BadEvent{ID: "forged", Seq: 6}
				}, 5},
			} {
				t.Run(tc.name, func(t *testing.T) {
					org := "org-" + strings.ReplaceAll(tc.name, " ", "-")
					ev := chain(t, st, org, 5)
					want := tc.tamper(t, org, ev)
					got, err := audit.Verify(ctx, st, org)
					if err != nil {
						t.Fatalf("Verify = %v", err)
					}
					if (want == audit.BadEvent{}) {
						if !got.OK || got.Events != 5 || got.FirstBadEvent != nil {
							t.Errorf("Verify = %+v, want ok with 5 events", got)
						}
						return
					}
					if got.OK || got.FirstBadEvent == nil || *got.FirstBadEvent != want || got.Reason == "" {
						t.Fatalf("Verify = %+v (bad %+v), want not ok naming %+v with a reason", got, got.FirstBadEvent, want)
					}
					if got.Events != tc.events {
						t.Errorf("Verify counted %d good events, want %d", got.Events, tc.events)
					}
				})
			}
		})
	}
}

func TestVerifyAfterRetention(t *testing.T) {
	ctx := context.Background()
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			st := eng.New(t)
			raw := storetest.RawOf(t, st)
			// Three events from two days ago, then three of now.
			old := time.Now().Add(-48 * time.Hour)
			for i := range 3 {
				e := &keybridge.AuditEvent{OrgID: "org", Time: old, Action: fmt.Sprint("old.", i),
					Actor: keybridge.Actor{Type: keybridge.ActorSystem, ID: "system"}, Resource: keybridge.Resource{Type: "thing", ID: "1"}}
				if err := st.AppendAuditEvent(ctx, e); err != nil {
					t.Fatalf("AppendAuditEvent = %v", err)
				}
			}
			chain(t, st, "org", 3)

			n, err := st.DeleteAuditEventsBefore(ctx, "org", time.Now().Add(-24*time.Hour))
			if err != nil || n != 3 {
				t.Fatalf("DeleteAuditEventsBefore = %d, %v; want 3", n, err)
			}
			got, err := audit.Verify(ctx, st, "org")
			if err != nil || !got.OK || got.Events != 3 {
				t.Errorf("Verify after retention = %+v, %v; want ok with 3 events", got, err)
			}
			// Removing the oldest remaining event is not retention.
			raw.Exec(t, `DELETE FROM audit_events WHERE org_id = 'org' AND seq = 4`)
			got, err = audit.Verify(ctx, st, "org")
			if err != nil || got.OK || got.FirstBadEvent == nil || got.FirstBadEvent.Seq != 4 {
				t.Errorf("Verify after deleting the oldest kept event = %+v, %v; want event 4 named", got, err)
			}
		})
	}
}

func TestRecordFailureRollsBack(t *testing.T) {
	ctx := context.Background()
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			st := eng.New(t)
			raw := storetest.RawOf(t, st)
			org := &keybridge.Org{Slug: "acme", Name: "Acme"}
			if err := st.CreateOrg(ctx, org); err != nil {
				t.Fatalf("CreateOrg = %v", err)
			}
			raw.RefuseAuditWrites(t)
			err := st.InTx(ctx, func(tx store.Store) error {
				p := &keybridge.Project{OrgID: org.ID, Name: "web"}
				if err := tx.CreateProject(ctx, p); err != nil {
					return err
				}
				return audit.Record(ctx, tx, org.ID, "project.create", keybridge.Resource{Type: "project", ID: p.ID}, nil)
			})
			if err == nil {
				t.Fatal("InTx with a refused audit write = nil, want an error")
			}
			items, _, err := st.ListProjects(ctx, org.ID, store.Page{})
			if err != nil || len(items) != 0 {
				t.Errorf("ListProjects = %v, %v; want no project: the change must roll back with its event", items, err)
			}
		})
	}
}

// refuseAuditWrites installs a trigger that makes every insert into
// audit_events fail.
func TestRecordActorAndRequest(t *testing.T) {
	ctx := context.Background()
	st := storetest.SQLite(t)
	ctx = keybridge.NewContextWithRequestInfo(ctx, keybridge.RequestInfo{IP: "192.0.2.1", UserAgent: "curl/8", RequestID: "req-1"})
	for _, tc := range []struct {
		name string
		p    *keybridge.Principal
		want keybridge.Actor
	}{
		{"system", nil, keybridge.Actor{Type: keybridge.ActorSystem, ID: "system"}},
		{"user", &keybridge.Principal{Type: keybridge.ActorUser, UserID: "u1", Email: "a@b.test", KeyID: "sess"},
			keybridge.Actor{Type: keybridge.ActorUser, ID: "u1", Email: "a@b.test"}},
		{"api key", &keybridge.Principal{Type: keybridge.ActorAPIKey, UserID: "u1", Email: "a@b.test", KeyID: "k1"},
			keybridge.Actor{Type: keybridge.ActorAPIKey, ID: "k1", Email: "a@b.test"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ctx
			if tc.p != nil {
				c = keybridge.NewContextWithPrincipal(ctx, tc.p)
			}
			org := "org-" + tc.name
			err := st.InTx(c, func(tx store.Store) error {
				return audit.Record(c, tx, org, "thing.create", keybridge.Resource{Type: "thing", ID: "1"},
					map[string]keybridge.Change{"password": {Old: nil, New: "hunter2"}})
			})
			if err != nil {
				t.Fatalf("Record = %v", err)
			}
			events, _, err := st.ListAuditEvents(ctx, store.AuditFilter{OrgID: org}, store.Page{})
			if err != nil || len(events) != 1 {
				t.Fatalf("ListAuditEvents = %v, %v", events, err)
			}
			e := events[0]
			if e.Actor != tc.want || e.IP != "192.0.2.1" || e.UserAgent != "curl/8" || e.RequestID != "req-1" {
				t.Errorf("event actor %+v ip %q ua %q req %q, want %+v from the context", e.Actor, e.IP, e.UserAgent, e.RequestID, tc.want)
			}
			if got := e.Changes["password"].New; got != keybridge.Redacted {
				t.Errorf("hand-built password change stored as %v, want %q", got, keybridge.Redacted)
			}
		})
	}
}
