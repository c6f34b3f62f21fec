package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/httpapi"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// Tests of the audit log (SPEC §8) and the usage query (SPEC §7).

type auEvent struct {
	ID        string                      `json:"id"`
	Seq       int64                       `json:"seq"`
	Time      time.Time                   `json:"time"`
	OrgID     string                      `json:"org_id"`
	Actor     keybridge.Actor             `json:"actor"`
	Action    string                      `json:"action"`
	Resource  keybridge.Resource          `json:"resource"`
	IP        string                      `json:"ip"`
	UserAgent string                      `json:"user_agent"`
	RequestID string                      `json:"request_id"`
	Changes   map[string]keybridge.Change `json:"changes"`
}

type auVerify struct {
	OK            bool  `json:"ok"`
	Events        int64 `json:"events"`
	FirstBadEvent *struct {
		ID  string `json:"id"`
		Seq int64  `json:"seq"`
	} `json:"first_bad_event"`
	Reason string `json:"reason"`
}

func auPath(org *keybridge.Org, rest string) string { return "/api/v1/orgs/" + org.Slug + rest }

func (e *env) auList(query string) pjList[auEvent] {
	e.t.Helper()
	resp, body := e.do("GET", auPath(e.Org, "/audit-events"+query), e.OwnerKey, nil)
	wantStatus(e.t, resp, body, http.StatusOK)
	return decodeAs[pjList[auEvent]](e.t, body)
}

func (e *env) auVerify() auVerify {
	e.t.Helper()
	resp, body := e.do("GET", auPath(e.Org, "/audit-events/verify"), e.OwnerKey, nil)
	wantStatus(e.t, resp, body, http.StatusOK)
	var v auVerify
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		e.t.Fatalf("verify answer %s: %v", body, err)
	}
	return v
}

func TestAuditEvents(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, adminKey := e.addMember(keybridge.RoleAdmin)
		_, memberKey := e.addMember(keybridge.RoleMember)
		other := e.otherOrg()
		before := time.Now().UTC().Add(-time.Second)
		web := e.pjCreate(e.Org, adminKey, "web")
		resp, body := e.send("PATCH", pjPath(e.Org, "/"+web.ID), map[string]any{"description": "new words"}, func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer "+e.OwnerKey)
			r.Header.Set("User-Agent", "audit-test/1")
		})
		wantStatus(t, resp, body, http.StatusOK)
		requestID := resp.Header.Get("X-Request-Id")
		e.pjCreate(e.Org, e.OwnerKey, "api")
		e.pjCreate(other.Org, other.OwnerKey, "theirs")

		all := e.auList("")
		if len(all.Items) < 3 {
			t.Fatalf("events = %+v, want at least 3", all.Items)
		}
		for i := 1; i < len(all.Items); i++ {
			if all.Items[i].Time.After(all.Items[i-1].Time) {
				t.Errorf("events are not newest first: %v before %v", all.Items[i-1].Time, all.Items[i].Time)
			}
		}
		var update *auEvent
		for i, ev := range all.Items {
			if ev.OrgID != e.Org.ID {
				t.Errorf("event of org %s in this org's log", ev.OrgID)
			}
			if ev.Action == "project.update" {
				update = &all.Items[i]
			}
		}
		if update == nil {
			t.Fatalf("no project.update event in %+v", all.Items)
		}
		if update.Actor.Type != keybridge.ActorAPIKey || update.Actor.Email != e.Owner.Email || update.Resource != (keybridge.Resource{Type: "project", ID: web.ID, Name: "web"}) ||
			update.UserAgent != "audit-test/1" || update.RequestID != requestID || update.IP == "" || update.Seq == 0 {
			t.Errorf("update event = %+v", update)
		}
		if c := update.Changes["description"]; c.Old != "the web service" || c.New != "new words" || len(update.Changes) != 1 {
			t.Errorf("update changes = %v, want only the description", update.Changes)
		}

		for _, tc := range []struct {
			query string
			want  func(auEvent) bool
		}{
			{"?action=project.create", func(ev auEvent) bool { return ev.Action == "project.create" }},
			{"?resource_type=project&resource_id=" + web.ID, func(ev auEvent) bool { return ev.Resource.ID == web.ID }},
			{"?actor=" + url.QueryEscape(e.Owner.Email), func(ev auEvent) bool { return ev.Actor.Email == e.Owner.Email }},
			{"?since=" + before.Format(time.RFC3339Nano) + "&until=" + url.QueryEscape(time.Now().Add(time.Hour).Format(time.RFC3339)), func(ev auEvent) bool { return !ev.Time.Before(before) }},
		} {
			got := e.auList(tc.query)
			if len(got.Items) == 0 {
				t.Errorf("%s: no events", tc.query)
			}
			for _, ev := range got.Items {
				if !tc.want(ev) {
					t.Errorf("%s: event %+v does not match", tc.query, ev)
				}
			}
		}
		if got := e.auList("?until=" + before.Format(time.RFC3339Nano) + "&action=project.update"); len(got.Items) != 0 {
			t.Errorf("until before every change: %d events, want none", len(got.Items))
		}

		// Cursor pagination walks the same events.
		var paged []string
		cursor := ""
		for i := 0; i < 50; i++ {
			page := e.auList("?limit=2&cursor=" + url.QueryEscape(cursor))
			for _, ev := range page.Items {
				paged = append(paged, ev.ID)
			}
			if cursor = page.NextCursor; cursor == "" {
				break
			}
		}
		var ids []string
		for _, ev := range all.Items {
			ids = append(ids, ev.ID)
		}
		if !slices.Equal(paged, ids) {
			t.Errorf("paged ids = %v, want %v", paged, ids)
		}

		for _, tc := range []struct {
			name, path, key string
			code, field     string
		}{
			{"members may not read the log", "/audit-events", memberKey, keybridge.EForbidden, ""},
			{"members may not verify it", "/audit-events/verify", memberKey, keybridge.EForbidden, ""},
			{"no credentials", "/audit-events", "", keybridge.EUnauthenticated, ""},
			{"another org's caller", "/audit-events", other.OwnerKey, keybridge.ENotFound, ""},
			{"another org's caller verifying", "/audit-events/verify", other.OwnerKey, keybridge.ENotFound, ""},
			{"a bad since", "/audit-events?since=yesterday", adminKey, keybridge.EInvalid, "since"},
			{"a date without time", "/audit-events?until=2026-01-02", adminKey, keybridge.EInvalid, "until"},
			{"until before since", "/audit-events?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", adminKey, keybridge.EInvalid, "until"},
			{"an until of the year 10000 in UTC", "/audit-events?until=" + url.QueryEscape("9999-12-31T23:00:00-05:00"), adminKey, keybridge.EInvalid, "until"},
			{"a bad cursor", "/audit-events?cursor=nope", adminKey, keybridge.EInvalid, "cursor"},
			{"a bad limit", "/audit-events?limit=501", adminKey, keybridge.EInvalid, "limit"},
		} {
			resp, body := e.do("GET", auPath(e.Org, tc.path), tc.key, nil)
			got := wantError(t, resp, body, tc.code)
			if _, ok := got.Error.Fields[tc.field]; tc.field != "" && !ok {
				t.Errorf("case %q: fields %v, want one for %q", tc.name, got.Error.Fields, tc.field)
			}
		}
		resp, body = e.do("GET", auPath(e.Org, "/audit-events/verify"), adminKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
	})
}

// TestAuditVerifyFindsTampering changes the stored log with plain SQL, as
// someone with the database could, and expects verify to name the event.
func TestAuditVerifyFindsTampering(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		for _, n := range []string{"one", "two", "three", "four", "five"} {
			e.pjCreate(e.Org, e.OwnerKey, n)
		}
		got := e.auVerify()
		if !got.OK || got.Events < 5 || got.FirstBadEvent != nil || got.Reason != "" {
			t.Fatalf("verify of an untouched log = %+v, want ok with every event", got)
		}
		total := got.Events
		events := e.auList("?action=project.create")
		slices.Reverse(events.Items) // oldest first
		raw := storetest.RawOf(t, e.Store)

		// An altered field.
		victim := events.Items[1]
		raw.Exec(t, `UPDATE audit_events SET resource_name = 'innocent' WHERE id = ?`, victim.ID)
		got = e.auVerify()
		if got.OK || got.FirstBadEvent == nil || got.FirstBadEvent.ID != victim.ID || got.FirstBadEvent.Seq != victim.Seq || got.Reason == "" {
			t.Errorf("verify after UPDATE of event %d = %+v, want it named", victim.Seq, got)
		}
		if got.Events != victim.Seq-1 {
			t.Errorf("verify counted %d good events, want %d before the altered one", got.Events, victim.Seq-1)
		}
		raw.Exec(t, `UPDATE audit_events SET resource_name = ? WHERE id = ?`, victim.Resource.Name, victim.ID)
		if got := e.auVerify(); !got.OK || got.Events != total {
			t.Fatalf("verify after restoring the field = %+v, want ok", got)
		}

		// Changes that no longer read as JSON: the log still lists, and
		// verify names the event rather than failing.
		victim = events.Items[2]
		var stored string
		if err := raw.DB.QueryRow(`SELECT changes FROM audit_events WHERE id = '` + victim.ID + `'`).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		raw.Exec(t, `UPDATE audit_events SET changes = 'not json' WHERE id = ?`, victim.ID)
		listed := e.auList("?resource_id=" + victim.Resource.ID)
		if len(listed.Items) != 1 || listed.Items[0].Changes["(unreadable)"].New != "not json" {
			t.Errorf("events of the altered one = %+v, want it with its stored changes shown", listed.Items)
		}
		got = e.auVerify()
		if got.OK || got.FirstBadEvent == nil || got.FirstBadEvent.ID != victim.ID || !strings.Contains(got.Reason, "altered") {
			t.Errorf("verify after unreadable changes in event %d = %+v, want it named as altered", victim.Seq, got)
		}
		raw.Exec(t, `UPDATE audit_events SET changes = ? WHERE id = ?`, stored, victim.ID)

		// The chain's head row lost: verify names the first event as not
		// appended through the log, and a change, which cannot be chained
		// on, is a bare 500 (nothing the caller did conflicts).
		saved := headRow(t, raw, e.Org.ID)
		raw.Exec(t, `DELETE FROM audit_heads WHERE org_id = ?`, e.Org.ID)
		if got := e.auVerify(); got.OK || got.FirstBadEvent == nil || got.FirstBadEvent.Seq != 1 {
			t.Errorf("verify without the head row = %+v, want event 1 named", got)
		}
		resp, body := e.do("POST", pjPath(e.Org, ""), e.OwnerKey, map[string]any{"name": "after-head-lost"})
		if got := wantError(t, resp, body, keybridge.EInternal); got.Error.Message != "internal error" {
			t.Errorf("a change with the head row lost = %s, want a bare internal error", body)
		}
		raw.Exec(t, `INSERT INTO audit_heads (org_id, seq, hash, anchor_seq, anchor_hash) VALUES (?, ?, ?, ?, ?)`,
			e.Org.ID, saved.seq, saved.hash, saved.anchorSeq, saved.anchorHash)
		if got := e.auVerify(); !got.OK || got.Events != total {
			t.Fatalf("verify after restoring the head row = %+v, want ok", got)
		}

		// A removed event.
		victim = events.Items[3]
		raw.Exec(t, `DELETE FROM audit_events WHERE id = ?`, victim.ID)
		got = e.auVerify()
		if got.OK || got.FirstBadEvent == nil || got.FirstBadEvent.Seq != victim.Seq || !strings.Contains(got.Reason, "removed") {
			t.Errorf("verify after DELETE of event %d = %+v, want it named as removed", victim.Seq, got)
		}
	})
}

// TestAuditWriteFailureRollsBack makes every audit write fail: the change
// must not happen, and the caller gets a bare 500.
func TestAuditWriteFailureRollsBack(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		web := e.pjCreate(e.Org, e.OwnerKey, "web")
		storetest.RawOf(t, e.Store).RefuseAuditWrites(t)
		for _, tc := range []struct {
			method, path string
			body         any
		}{
			{"POST", pjPath(e.Org, ""), map[string]any{"name": "never"}},
			{"PATCH", pjPath(e.Org, "/"+web.ID), map[string]any{"name": "renamed"}},
			{"DELETE", pjPath(e.Org, "/"+web.ID), nil},
			{"POST", pjPath(e.Org, "/"+web.ID+"/ai-keys"), map[string]any{"name": "k", "ai_type": "OPENAI"}},
		} {
			resp, body := e.do(tc.method, tc.path, e.OwnerKey, tc.body)
			got := wantError(t, resp, body, keybridge.EInternal)
			if got.Error.Message != "internal error" || strings.Contains(string(body), "refuses") || strings.Contains(string(body), "audit") {
				t.Errorf("%s %s answered %s, want a bare internal error", tc.method, tc.path, body)
			}
			if id := resp.Header.Get("X-Request-Id"); !strings.Contains(e.logs(), id) {
				t.Errorf("%s %s: the log has no line with request id %s", tc.method, tc.path, id)
			}
		}
		resp, body := e.do("GET", pjPath(e.Org, ""), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		list := decodeAs[pjList[pjProject]](t, body)
		if len(list.Items) != 1 || list.Items[0].Name != "web" {
			t.Errorf("projects = %+v, want only web, unchanged: every change rolled back with its event", list.Items)
		}
		resp, body = e.do("GET", pjPath(e.Org, "/"+web.ID+"/ai-keys?include_deleted=true"), e.OwnerKey, nil)
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[pjList[pjAIKey]](t, body); len(got.Items) != 0 {
			t.Errorf("AI keys = %+v, want none", got.Items)
		}
	})
}

type auUsage struct {
	GroupBy string                 `json:"group_by"`
	Bucket  string                 `json:"bucket"`
	Since   time.Time              `json:"since"`
	Until   time.Time              `json:"until"`
	Items   []keybridge.UsageGroup `json:"items"`
}

func TestUsage(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e *env) {
		_, memberKey := e.addMember(keybridge.RoleMember)
		_, adminKey := e.addMember(keybridge.RoleAdmin)
		other := e.otherOrg()
		now := time.Now().UTC()
		rows := []keybridge.Usage{
			{OrgID: e.Org.ID, Time: now.Add(-time.Hour), ProviderID: "p1", Model: "gpt", UserID: "u1", APIKeyID: "k1", Status: 200, InputTokens: 10, OutputTokens: 5, CacheReadTokens: 2, CacheWriteTokens: 1, LatencyMS: 300, Failovers: 1},
			{OrgID: e.Org.ID, Time: now.Add(-2 * time.Hour), ProviderID: "p1", Model: "gpt", ProjectID: "proj", AIKeyID: "ai1", Status: 429, InputTokens: 7, LatencyMS: 100, Failovers: 2},
			{OrgID: e.Org.ID, Time: now.Add(-3 * time.Hour), ProviderID: "p2", Model: "claude", UserID: "u1", APIKeyID: "k1", Status: 200, OutputTokens: 9, LatencyMS: 50},
			{OrgID: e.Org.ID, Time: now.Add(-40 * 24 * time.Hour), ProviderID: "p3", Model: "old", Status: 200},
			{OrgID: other.Org.ID, Time: now.Add(-time.Hour), ProviderID: "p1", Model: "gpt", Status: 200, InputTokens: 1000},
		}
		if err := e.Store.InsertUsage(context.Background(), rows); err != nil {
			t.Fatalf("InsertUsage = %v", err)
		}
		get := func(query string) auUsage {
			t.Helper()
			resp, body := e.do("GET", auPath(e.Org, "/usage"+query), adminKey, nil)
			wantStatus(t, resp, body, http.StatusOK)
			return decodeAs[auUsage](t, body)
		}
		for _, tc := range []struct {
			query string
			want  []keybridge.UsageGroup
		}{
			{"", []keybridge.UsageGroup{ // provider, last 30 days
				{Key: "p1", Requests: 2, Errors: 1, InputTokens: 17, OutputTokens: 5, CacheReadTokens: 2, CacheWriteTokens: 1, Failovers: 3, LatencyMSAvg: 200},
				{Key: "p2", Requests: 1, OutputTokens: 9, LatencyMSAvg: 50},
			}},
			{"?group_by=model", []keybridge.UsageGroup{
				{Key: "gpt", Requests: 2, Errors: 1, InputTokens: 17, OutputTokens: 5, CacheReadTokens: 2, CacheWriteTokens: 1, Failovers: 3, LatencyMSAvg: 200},
				{Key: "claude", Requests: 1, OutputTokens: 9, LatencyMSAvg: 50},
			}},
			{"?group_by=user", []keybridge.UsageGroup{
				{Key: "u1", Requests: 2, InputTokens: 10, OutputTokens: 14, CacheReadTokens: 2, CacheWriteTokens: 1, Failovers: 1, LatencyMSAvg: 175},
				{Key: "", Requests: 1, Errors: 1, InputTokens: 7, Failovers: 2, LatencyMSAvg: 100},
			}},
			{"?group_by=project", []keybridge.UsageGroup{
				{Key: "", Requests: 2, InputTokens: 10, OutputTokens: 14, CacheReadTokens: 2, CacheWriteTokens: 1, Failovers: 1, LatencyMSAvg: 175},
				{Key: "proj", Requests: 1, Errors: 1, InputTokens: 7, Failovers: 2, LatencyMSAvg: 100},
			}},
			{"?group_by=api_key", []keybridge.UsageGroup{
				{Key: "k1", Requests: 2, InputTokens: 10, OutputTokens: 14, CacheReadTokens: 2, CacheWriteTokens: 1, Failovers: 1, LatencyMSAvg: 175},
				{Key: "ai1", Requests: 1, Errors: 1, InputTokens: 7, Failovers: 2, LatencyMSAvg: 100},
			}},
			{"?group_by=model&since=" + now.Add(-50*24*time.Hour).Format(time.RFC3339) + "&until=" + now.Add(-150*time.Minute).Format(time.RFC3339Nano), []keybridge.UsageGroup{
				{Key: "claude", Requests: 1, OutputTokens: 9, LatencyMSAvg: 50},
				{Key: "old", Requests: 1},
			}},
		} {
			got := get(tc.query)
			if !storetest.UsageEqual(got.Items, tc.want) {
				t.Errorf("usage%s = %+v, want %+v", tc.query, got.Items, tc.want)
			}
		}
		if got := get(""); got.GroupBy != "provider" || got.Until.Sub(got.Since) != 30*24*time.Hour || got.Until.Before(now) {
			t.Errorf("usage defaults = group_by %q, %v..%v; want provider over the last 30 days", got.GroupBy, got.Since, got.Until)
		}
		// A series per group: one point per hour with requests, on the
		// hour in UTC, oldest first.
		hour := func(d time.Duration) time.Time { return now.Add(d).Truncate(time.Hour) }
		got := get("?group_by=provider&bucket=hour")
		want := []keybridge.UsageGroup{
			{Key: "p1", Requests: 2, Errors: 1, InputTokens: 17, OutputTokens: 5, CacheReadTokens: 2, CacheWriteTokens: 1, Failovers: 3, LatencyMSAvg: 200,
				Series: []keybridge.UsagePoint{
					{Start: hour(-2 * time.Hour), Requests: 1, Errors: 1, InputTokens: 7, Failovers: 2, LatencyMSAvg: 100},
					{Start: hour(-time.Hour), Requests: 1, InputTokens: 10, OutputTokens: 5, CacheReadTokens: 2, CacheWriteTokens: 1, Failovers: 1, LatencyMSAvg: 300},
				}},
			{Key: "p2", Requests: 1, OutputTokens: 9, LatencyMSAvg: 50,
				Series: []keybridge.UsagePoint{{Start: hour(-3 * time.Hour), Requests: 1, OutputTokens: 9, LatencyMSAvg: 50}}},
		}
		if got.Bucket != "hour" || !storetest.UsageEqual(got.Items, want) {
			t.Errorf("usage?bucket=hour = bucket %q, %+v; want hour, %+v", got.Bucket, got.Items, want)
		}
		// The day series sums the same rows per UTC day, whatever hours they
		// fell in.
		got = get("?group_by=model&bucket=day")
		for _, g := range got.Items {
			var n int64
			for _, p := range g.Series {
				n += p.Requests
				if !p.Start.Equal(p.Start.Truncate(24*time.Hour)) || p.Start.Location() != time.UTC {
					t.Errorf("usage?bucket=day: point start %v, want midnight UTC", p.Start)
				}
			}
			if len(g.Series) == 0 || n != g.Requests {
				t.Errorf("usage?bucket=day: group %q has %d requests and a series of %d points totalling %d", g.Key, g.Requests, len(g.Series), n)
			}
		}
		if len(get("").Items[0].Series) != 0 {
			t.Errorf("usage without bucket has a series; want none")
		}
		empty := "?since=" + now.Add(-60*24*time.Hour).Format(time.RFC3339) + "&until=" + now.Add(-50*24*time.Hour).Format(time.RFC3339)
		if got := get(empty); got.Items == nil || len(got.Items) != 0 {
			t.Errorf("usage of an empty window = %+v, want an empty items array", got)
		}

		for _, tc := range []struct {
			name, query, key string
			code, field      string
		}{
			{"a bad group_by", "?group_by=colour", adminKey, keybridge.EInvalid, "group_by"},
			{"a bad bucket", "?bucket=week", adminKey, keybridge.EInvalid, "bucket"},
			{"a bad since", "?since=last-week", adminKey, keybridge.EInvalid, "since"},
			{"until before since", "?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", adminKey, keybridge.EInvalid, "until"},
			{"since after the default until", "?since=2999-01-01T00:00:00Z", adminKey, keybridge.EInvalid, "since"},
			{"an until of the year 10000 in UTC", "?until=" + url.QueryEscape("9999-12-31T23:00:00-05:00"), adminKey, keybridge.EInvalid, "until"},
			{"... with a series", "?bucket=day&until=" + url.QueryEscape("9999-12-31T23:00:00-05:00"), adminKey, keybridge.EInvalid, "until"},
			{"members may not read usage", "", memberKey, keybridge.EForbidden, ""},
			{"no credentials", "", "", keybridge.EUnauthenticated, ""},
			{"another org's caller", "", other.OwnerKey, keybridge.ENotFound, ""},
		} {
			resp, body := e.do("GET", auPath(e.Org, "/usage"+tc.query), tc.key, nil)
			got := wantError(t, resp, body, tc.code)
			if _, ok := got.Error.Fields[tc.field]; tc.field != "" && !ok {
				t.Errorf("case %q: fields %v, want one for %q", tc.name, got.Error.Fields, tc.field)
			}
		}
	})
}

// TestUsageSinceRetention: a usage window that starts before the rows
// retention keeps is refused naming since, instead of answering the
// smaller totals of what is left as if they were whole; the default
// window is cut to what is kept.
func TestUsageSinceRetention(t *testing.T) {
	e := newEnvWith(t, storetest.SQLite(t), envOptions{Config: httpapi.Config{UsageRetention: 10 * 24 * time.Hour}})
	now := time.Now().UTC()
	kept := now.Add(-10 * 24 * time.Hour).Truncate(24 * time.Hour)
	path := "/api/v1/orgs/" + e.Org.Slug + "/usage"
	for _, c := range []struct {
		query string
		field string // "" when the query is answered
	}{
		{"?since=" + kept.Add(-time.Second).Format(time.RFC3339), "since"},
		{"?since=" + now.Add(-60*24*time.Hour).Format(time.RFC3339), "since"},
		{"?since=" + kept.Format(time.RFC3339), ""},
		{"?until=" + kept.Add(-time.Hour).Format(time.RFC3339), "until"},
		{"", ""},
	} {
		resp, raw := e.do("GET", path+c.query, e.OwnerKey, nil)
		if c.field != "" {
			if got := wantError(t, resp, raw, keybridge.EInvalid); got.Error.Fields[c.field] == "" {
				t.Errorf("usage%s: fields = %v, want %s", c.query, got.Error.Fields, c.field)
			}
			continue
		}
		wantStatus(t, resp, raw, http.StatusOK)
		got := decodeAs[struct {
			Since time.Time `json:"since"`
		}](t, raw)
		if got.Since.Before(kept) {
			t.Errorf("usage%s: since = %v, before the retention window's start %v", c.query, got.Since, kept)
		}
	}
	// Rows kept forever: any since is answered.
	forever := newEnvWith(t, storetest.SQLite(t), envOptions{Config: httpapi.Config{UsageRetention: -1}})
	resp, raw := forever.do("GET", "/api/v1/orgs/"+forever.Org.Slug+"/usage?since=2001-01-01T00:00:00Z", forever.OwnerKey, nil)
	wantStatus(t, resp, raw, http.StatusOK)
	// Even the first instant a since may name: nothing was removed.
	resp, raw = forever.do("GET", "/api/v1/orgs/"+forever.Org.Slug+"/usage?since=0000-01-01T00:00:00Z&bucket=day", forever.OwnerKey, nil)
	wantStatus(t, resp, raw, http.StatusOK)
}

// auditHead is an org's row of audit_heads as stored.
type auditHead struct {
	seq, anchorSeq   int64
	hash, anchorHash []byte
}

func headRow(t *testing.T, raw storetest.Raw, orgID string) auditHead {
	t.Helper()
	var h auditHead
	err := raw.DB.QueryRow(`SELECT seq, hash, anchor_seq, anchor_hash FROM audit_heads WHERE org_id = '`+orgID+`'`).
		Scan(&h.seq, &h.hash, &h.anchorSeq, &h.anchorHash)
	if err != nil {
		t.Fatalf("read audit head: %v", err)
	}
	// The columns are NOT NULL; an empty hash scans as nil.
	h.hash, h.anchorHash = append([]byte{}, h.hash...), append([]byte{}, h.anchorHash...)
	return h
}
