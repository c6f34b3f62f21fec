package retention_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/audit"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/retention"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/storetest"
	"github.com/keybridge/keybridge/internal/testsupport"
)

func appendAt(t *testing.T, st store.Store, org string, at time.Time, action string) {
	t.Helper()
	e := &keybridge.AuditEvent{OrgID: org, Time: at, Action: action,
		Actor: keybridge.Actor{Type: keybridge.ActorSystem, ID: "system"}, Resource: keybridge.Resource{Type: "thing", ID: "1"}}
	if err := st.AppendAuditEvent(context.Background(), e); err != nil {
		t.Fatalf("AppendAuditEvent = %v", err)
	}
}

func usageCount(t *testing.T, st store.Store, org string) int64 {
	t.Helper()
	groups, err := st.QueryUsage(context.Background(), keybridge.UsageQuery{OrgID: org, GroupBy: keybridge.GroupByModel,
		Since: time.Now().Add(-400 * 24 * time.Hour), Until: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatalf("QueryUsage = %v", err)
	}
	var n int64
	for _, g := range groups {
		n += g.Requests
	}
	return n
}

func TestOnce(t *testing.T) {
	ctx := context.Background()
	day := 24 * time.Hour
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			for _, tc := range []struct {
				name        string
				opts        retention.Options
				wantUsage   int64 // rows kept of 3
				wantTrimmed int   // audit events removed of org "a"
			}{
				{"defaults keep 90 days of usage and every event", retention.Options{}, 2, 0},
				{"usage kept 10 days, events 30", retention.Options{Usage: 10 * day, Audit: 30 * day}, 1, 2},
				{"usage kept forever", retention.Options{Usage: -1}, 3, 0},
			} {
				t.Run(tc.name, func(t *testing.T) {
					st := eng.New(t)
					now := time.Now()
					if err := st.InsertUsage(ctx, []keybridge.Usage{
						{OrgID: "a", Time: now.Add(-200 * day), Model: "m", Status: 200},
						{OrgID: "a", Time: now.Add(-20 * day), Model: "m", Status: 200},
						{OrgID: "a", Time: now.Add(-time.Hour), Model: "m", Status: 200},
					}); err != nil {
						t.Fatalf("InsertUsage = %v", err)
					}
					appendAt(t, st, "a", now.Add(-100*day), "old.one")
					appendAt(t, st, "a", now.Add(-40*day), "old.two")
					appendAt(t, st, "a", now.Add(-time.Hour), "recent")
					appendAt(t, st, "b", now.Add(-time.Hour), "recent")
					logs := &testsupport.SyncBuffer{}
					tc.opts.Logger = slog.New(slog.NewJSONHandler(logs, nil))

					rep, err := retention.Once(ctx, st, tc.opts)
					if err != nil {
						t.Fatalf("Once = %v", err)
					}
					if got := usageCount(t, st, "a"); got != tc.wantUsage {
						t.Errorf("usage rows kept = %d, want %d", got, tc.wantUsage)
					}
					if got := rep.AuditEvents["a"]; got != tc.wantTrimmed {
						t.Errorf("report: %d audit events removed of org a, want %d", got, tc.wantTrimmed)
					}
					if _, ok := rep.AuditEvents["b"]; ok {
						t.Errorf("report: events of org b removed, want none")
					}
					for _, org := range []string{"a", "b"} {
						if res, err := audit.Verify(ctx, st, org); err != nil || !res.OK {
							t.Errorf("Verify(%s) after retention = %+v, %v; want ok", org, res, err)
						}
					}
					events, _, err := st.ListAuditEvents(ctx, store.AuditFilter{OrgID: "a", Action: retention.ActionTrim}, store.Page{})
					if err != nil {
						t.Fatalf("ListAuditEvents = %v", err)
					}
					if tc.wantTrimmed == 0 {
						if len(events) != 0 {
							t.Errorf("trim events = %d, want none when nothing was removed", len(events))
						}
						return
					}
					// Never silently: the removal is an event of its own and a
					// log line.
					if len(events) != 1 {
						t.Fatalf("trim events = %d, want 1", len(events))
					}
					e := events[0]
					if e.Actor.Type != keybridge.ActorSystem || e.Changes["removed_events"].New != json.Number("2") {
						t.Errorf("trim event = %+v, want the system removing 2 events", e)
					}
					if !strings.Contains(logs.String(), "removed audit events past retention") {
						t.Errorf("log %q does not mention the removed audit events", logs.String())
					}
				})
			}
		})
	}
}

func TestRunStopsWithContext(t *testing.T) {
	st := storetest.SQLite(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- retention.Run(ctx, st, retention.Options{Every: time.Millisecond}) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil once the context ends", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}

func TestOnceRemovesExpiredSessions(t *testing.T) {
	ctx := context.Background()
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			st := eng.New(t)
			u := &keybridge.User{Email: "a@example.com", Name: "A"}
			if err := st.CreateUser(ctx, u); err != nil {
				t.Fatal(err)
			}
			for name, exp := range map[string]time.Time{"expired": time.Now().Add(-time.Minute), "live": time.Now().Add(time.Hour)} {
				h := sha256.Sum256([]byte(name))
				if err := st.CreateSession(ctx, &keybridge.Session{UserID: u.ID, TokenHash: h[:], CSRFToken: name, ExpiresAt: exp}); err != nil {
					t.Fatal(err)
				}
			}
			rep, err := retention.Once(ctx, st, retention.Options{})
			if err != nil || rep.Sessions != 1 {
				t.Fatalf("Once = %+v, %v; want 1 session removed", rep, err)
			}
			live := sha256.Sum256([]byte("live"))
			if _, err := st.SessionByHash(ctx, live[:]); err != nil {
				t.Errorf("the live session is gone after a retention pass: %v", err)
			}
		})
	}
}

// Two replicas may trim one org's chain at the same moment. The second one
// waits for the first, and the event it records must name the part of the
// chain it removed itself, not what was there before the first trim.
func TestOnceRecordsWhatItRemovedBesideAnotherTrim(t *testing.T) {
	ctx := context.Background()
	day := 24 * time.Hour
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			st := eng.New(t)
			now := time.Now()
			for _, age := range []time.Duration{100 * day, 100 * day, 100 * day, 50 * day, 50 * day, 0} {
				appendAt(t, st, "a", now.Add(-age), "thing.update") // seq 1..6
			}
			trimmed := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- st.InTx(ctx, func(tx store.Store) error {
					if n, err := tx.DeleteAuditEventsBefore(ctx, "a", now.Add(-75*day)); err != nil || n != 3 {
						t.Errorf("first trim removed %d, %v; want 3", n, err)
					}
					close(trimmed)
					time.Sleep(300 * time.Millisecond)
					return nil
				})
			}()
			select {
			case <-trimmed:
			case err := <-done:
				t.Fatalf("first trim = %v", err)
			}
			rep, err := retention.Once(ctx, st, retention.Options{Audit: 30 * day})
			if err := <-done; err != nil {
				t.Fatalf("first trim = %v", err)
			}
			if err != nil || rep.AuditEvents["a"] != 2 {
				t.Fatalf("Once = %+v, %v; want 2 events of org a removed", rep, err)
			}
			events, _, err := st.ListAuditEvents(ctx, store.AuditFilter{OrgID: "a", Action: retention.ActionTrim}, store.Page{})
			if err != nil || len(events) != 1 {
				t.Fatalf("trim events = %d, %v; want 1", len(events), err)
			}
			got := events[0].Changes["first_seq"]
			if fmt.Sprint(got.Old) != "4" || fmt.Sprint(got.New) != "6" {
				t.Errorf("trim event first_seq = %v -> %v, want 4 -> 6", got.Old, got.New)
			}
		})
	}
}
