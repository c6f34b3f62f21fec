package storetest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
)

// Helpers of the usage suite, prefixed "usage".

// usageGroupBys lists every dimension of SPEC §7.
var usageGroupBys = []keybridge.UsageGroupBy{
	keybridge.GroupByProvider, keybridge.GroupByModel, keybridge.GroupByUser,
	keybridge.GroupByProject, keybridge.GroupByAPIKey,
}

// usageKeyOf is the group key a row falls in: the reference the store is
// checked against. A request made with an AI key counts under that key
// for api_key.
func usageKeyOf(u *keybridge.Usage, by keybridge.UsageGroupBy) string {
	switch by {
	case keybridge.GroupByProvider:
		return u.ProviderID
	case keybridge.GroupByModel:
		return u.Model
	case keybridge.GroupByUser:
		return u.UserID
	case keybridge.GroupByProject:
		return u.ProjectID
	case keybridge.GroupByAPIKey:
		return cmp.Or(u.APIKeyID, u.AIKeyID)
	}
	panic("unknown group by " + by)
}

// usageExpect aggregates rows the slow, obvious way: per group, and with
// q.Bucket per group per hour or UTC day.
func usageExpect(rows []keybridge.Usage, q keybridge.UsageQuery) []keybridge.UsageGroup {
	type sums struct {
		g       keybridge.UsageGroup
		latency float64
	}
	add := func(s *sums, u *keybridge.Usage) {
		s.g.Requests++
		if u.Status >= 400 {
			s.g.Errors++
		}
		s.g.InputTokens += u.InputTokens
		s.g.OutputTokens += u.OutputTokens
		s.g.CacheReadTokens += u.CacheReadTokens
		s.g.CacheWriteTokens += u.CacheWriteTokens
		s.g.Failovers += int64(u.Failovers)
		s.latency += u.LatencyMS
		s.g.LatencyMSAvg = s.latency / float64(s.g.Requests)
	}
	width := map[keybridge.UsageBucket]time.Duration{keybridge.BucketHour: time.Hour, keybridge.BucketDay: 24 * time.Hour}[q.Bucket]
	groups := map[string]*sums{}
	points := map[string]map[time.Time]*sums{}
	for i := range rows {
		u := &rows[i]
		if u.OrgID != q.OrgID || u.Time.Before(q.Since) || !u.Time.Before(q.Until) {
			continue
		}
		k := usageKeyOf(u, q.GroupBy)
		g := groups[k]
		if g == nil {
			g = &sums{g: keybridge.UsageGroup{Key: k}}
			groups[k] = g
			points[k] = map[time.Time]*sums{}
		}
		add(g, u)
		if width != 0 {
			start := u.Time.UTC().Truncate(width)
			p := points[k][start]
			if p == nil {
				p = &sums{}
				points[k][start] = p
			}
			add(p, u)
		}
	}
	out := []keybridge.UsageGroup{}
	for k, g := range groups {
		for _, start := range slices.SortedFunc(maps.Keys(points[k]), time.Time.Compare) {
			p := points[k][start].g
			g.g.Series = append(g.g.Series, keybridge.UsagePoint{Start: start, Requests: p.Requests, Errors: p.Errors,
				InputTokens: p.InputTokens, OutputTokens: p.OutputTokens, CacheReadTokens: p.CacheReadTokens,
				CacheWriteTokens: p.CacheWriteTokens, Failovers: p.Failovers, LatencyMSAvg: p.LatencyMSAvg})
		}
		out = append(out, g.g)
	}
	usageSort(out)
	return out
}

// UsageEqual reports whether two usage answers agree: every count exactly,
// the mean latencies to within float rounding (a sum's last bits depend on
// the order it was added in).
func UsageEqual(got, want []keybridge.UsageGroup) bool {
	near := func(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }
	return slices.EqualFunc(got, want, func(a, b keybridge.UsageGroup) bool {
		return a.Key == b.Key && a.Requests == b.Requests && a.Errors == b.Errors && a.InputTokens == b.InputTokens &&
			a.OutputTokens == b.OutputTokens && a.CacheReadTokens == b.CacheReadTokens && a.CacheWriteTokens == b.CacheWriteTokens &&
			a.Failovers == b.Failovers && near(a.LatencyMSAvg, b.LatencyMSAvg) &&
			slices.EqualFunc(a.Series, b.Series, func(p, q keybridge.UsagePoint) bool {
				pl, ql := p.LatencyMSAvg, q.LatencyMSAvg
				p.LatencyMSAvg, q.LatencyMSAvg = 0, 0
				return p == q && near(pl, ql)
			})
	})
}

// usageSort is the order QueryUsage answers in: most requests first, then
// by key.
func usageSort(gs []keybridge.UsageGroup) {
	slices.SortFunc(gs, func(a, b keybridge.UsageGroup) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Key, b.Key))
	})
}

// usageRows makes n requests of org spread over [from, from+span), with
// fixed randomness: several providers, models, users, projects, platform
// keys and AI keys, some failed.
func usageRows(r *rand.Rand, org string, n int, from time.Time, span time.Duration) []keybridge.Usage {
	rows := make([]keybridge.Usage, n)
	for i := range rows {
		u := keybridge.Usage{
			Time:             from.Add(time.Duration(r.Int64N(int64(span)))).Truncate(time.Microsecond),
			OrgID:            org,
			ProviderID:       fmt.Sprint("prov-", r.IntN(3)),
			ProviderKeyID:    fmt.Sprint("upkey-", r.IntN(4)),
			Model:            fmt.Sprint("model-", r.IntN(5)),
			Status:           []int{200, 200, 200, 201, 400, 429, 500, 502}[r.IntN(8)],
			Stream:           r.IntN(2) == 0,
			LatencyMS:        float64(r.Int64N(900_000)) / 1000, // whole µs, as the gateway measures
			InputTokens:      r.Int64N(5000),
			OutputTokens:     r.Int64N(2000),
			CacheReadTokens:  r.Int64N(300),
			CacheWriteTokens: r.Int64N(100),
			Failovers:        r.IntN(3),
		}
		u.UpstreamLatencyMS = u.LatencyMS * 0.9
		if r.IntN(3) == 0 {
			u.AIKeyID = fmt.Sprint("aikey-", r.IntN(4))
			u.ProjectID = fmt.Sprint("proj-", r.IntN(3))
		} else {
			u.APIKeyID = fmt.Sprint("apikey-", r.IntN(6))
			u.UserID = fmt.Sprint("user-", r.IntN(4))
		}
		rows[i] = u
	}
	return rows
}

func usageCheck(t *testing.T, st store.Store, rows []keybridge.Usage, q keybridge.UsageQuery) {
	t.Helper()
	got, err := st.QueryUsage(context.Background(), q)
	if err != nil {
		t.Fatalf("QueryUsage(%s, %v..%v) = %v", q.GroupBy, q.Since, q.Until, err)
	}
	want := usageExpect(rows, q)
	if !UsageEqual(got, want) {
		t.Errorf("QueryUsage(%s, bucket %q, %v..%v) =\n%+v\nwant\n%+v", q.GroupBy, q.Bucket, q.Since, q.Until, got, want)
	}
}

func testUsage(t *testing.T, newStore Factory) {
	ctx := context.Background()

	t.Run("QueryMatchesRows", func(t *testing.T) {
		st := newStore(t)
		r := rand.New(rand.NewPCG(1, 2))
		// A week around several day boundaries, inserted in batches of
		// uneven size, plus another org whose rows must never count.
		start := time.Date(2031, 3, 1, 5, 17, 0, 0, time.UTC)
		rows := usageRows(r, "org-a", 3000, start, 7*24*time.Hour)
		rows = append(rows, usageRows(r, "org-b", 500, start, 7*24*time.Hour)...)
		// Rows right on hour and day boundaries, where ranges split.
		edge := time.Date(2031, 3, 3, 0, 0, 0, 0, time.UTC)
		for _, d := range []time.Duration{-time.Microsecond, 0, time.Microsecond, time.Hour, time.Hour - time.Microsecond} {
			u := rows[0]
			u.ID, u.Time = "", edge.Add(d)
			rows = append(rows, u)
		}
		// The first batch as an older release wrote it: a database
		// upgraded since then has both kinds of raw rows, in the same hours.
		LegacyUsage(t, st, rows[:777])
		for chunk := range slices.Chunk(rows[777:], 777) {
			if err := st.InsertUsage(ctx, chunk); err != nil {
				t.Fatalf("InsertUsage = %v", err)
			}
		}
		// The recorder retries a batch whose commit it did not see land
		// as it was: the store must refuse it whole.
		if err := st.InsertUsage(ctx, rows[777:1554]); err == nil {
			t.Errorf("InsertUsage of rows already written = nil error, want a conflict")
		}
		ranges := []struct{ since, until time.Time }{
			{start.Add(-time.Hour), start.Add(8 * 24 * time.Hour)},                 // everything
			{edge, edge.Add(24 * time.Hour)},                                       // one whole day
			{edge.Add(-time.Microsecond), edge.Add(time.Hour)},                     // boundaries, inclusive since
			{edge.Add(time.Microsecond), edge.Add(time.Hour - time.Microsecond)},   // inside one hour
			{edge.Add(-30 * time.Minute), edge.Add(50*time.Hour + 13*time.Minute)}, // partial hours, hours and days
			{start.Add(37 * time.Minute), start.Add(5*24*time.Hour + 3*time.Second)},
			{edge.Add(2 * time.Hour), edge.Add(5 * time.Hour)}, // whole hours only
		}
		for _, rg := range ranges {
			for _, by := range usageGroupBys {
				for _, b := range []keybridge.UsageBucket{keybridge.BucketNone, keybridge.BucketHour, keybridge.BucketDay} {
					usageCheck(t, st, rows, keybridge.UsageQuery{OrgID: "org-a", GroupBy: by, Since: rg.since, Until: rg.until, Bucket: b})
				}
			}
		}
		for i := 0; i < 20; i++ {
			a := start.Add(time.Duration(r.Int64N(int64(7 * 24 * time.Hour)))).Truncate(time.Microsecond)
			b := a.Add(time.Duration(r.Int64N(int64(4 * 24 * time.Hour)))).Truncate(time.Microsecond)
			bucket := []keybridge.UsageBucket{keybridge.BucketNone, keybridge.BucketHour, keybridge.BucketDay}[i%3]
			usageCheck(t, st, rows, keybridge.UsageQuery{OrgID: "org-b", GroupBy: usageGroupBys[i%len(usageGroupBys)], Since: a, Until: b, Bucket: bucket})
		}
		got, err := st.QueryUsage(ctx, keybridge.UsageQuery{OrgID: "org-none", GroupBy: keybridge.GroupByModel, Since: start, Until: edge})
		if err != nil || len(got) != 0 {
			t.Errorf("QueryUsage(org without usage) = %v, %v; want no groups", got, err)
		}
	})

	t.Run("Defaults", func(t *testing.T) {
		st := newStore(t)
		now := time.Now().UTC()
		rows := []keybridge.Usage{
			{OrgID: "org", Time: now.Add(-31 * 24 * time.Hour), Model: "old", Status: 200, InputTokens: 1},
			{OrgID: "org", Time: now.Add(-29 * 24 * time.Hour), Model: "recent", Status: 500, InputTokens: 2},
			{OrgID: "org", Time: now.Add(-time.Minute), Model: "recent", Status: 200, OutputTokens: 3},
			{OrgID: "org", Model: "now", Status: 200}, // no time: the insert's
		}
		if err := st.InsertUsage(ctx, rows); err != nil {
			t.Fatalf("InsertUsage = %v", err)
		}
		got, err := st.QueryUsage(ctx, keybridge.UsageQuery{OrgID: "org", GroupBy: keybridge.GroupByModel, Until: now.Add(time.Hour)})
		if err != nil {
			t.Fatalf("QueryUsage = %v", err)
		}
		want := []keybridge.UsageGroup{
			{Key: "recent", Requests: 2, Errors: 1, InputTokens: 2, OutputTokens: 3},
			{Key: "now", Requests: 1},
		}
		if !UsageEqual(got, want) {
			t.Errorf("QueryUsage(last 30 days by default) = %+v, want %+v", got, want)
		}
		got, err = st.QueryUsage(ctx, keybridge.UsageQuery{OrgID: "org", GroupBy: keybridge.GroupByModel})
		if err != nil || len(got) == 0 || got[0].Key != "recent" {
			t.Errorf("QueryUsage(no window) = %+v, %v; want the last 30 days up to now", got, err)
		}
		_, err = st.QueryUsage(ctx, keybridge.UsageQuery{OrgID: "org", GroupBy: "colour"})
		baseCode(t, "QueryUsage(unknown group by)", err, keybridge.EInvalid)
		_, err = st.QueryUsage(ctx, keybridge.UsageQuery{OrgID: "org", GroupBy: keybridge.GroupByModel, Bucket: "week"})
		baseCode(t, "QueryUsage(unknown bucket)", err, keybridge.EInvalid)
		if err := st.InsertUsage(ctx, nil); err != nil {
			t.Errorf("InsertUsage(empty batch) = %v", err)
		}
	})

	// DeleteBefore runs on packed rows alone and on a database upgraded
	// from a release that wrote a row per request, which has both.
	for _, legacy := range []int{0, 700} {
		t.Run(fmt.Sprint("DeleteBefore/legacy=", legacy), func(t *testing.T) { testUsageDeleteBefore(t, newStore, legacy) })
	}

	// AuditOrgs is how retention finds every audit chain to trim.
	t.Run("RetentionAuditOrgs", func(t *testing.T) {
		st := newStore(t)
		got, err := st.AuditOrgs(ctx)
		if err != nil || len(got) != 0 {
			t.Errorf("AuditOrgs(empty store) = %v, %v; want none", got, err)
		}
		for _, org := range []string{"org-b", "", "org-a", "org-b"} {
			e := &keybridge.AuditEvent{OrgID: org, Time: baseTime, Action: "test.event",
				Actor: keybridge.Actor{Type: keybridge.ActorSystem, ID: "system"}, Resource: keybridge.Resource{Type: "test", ID: "1"}}
			if err := st.AppendAuditEvent(ctx, e); err != nil {
				t.Fatalf("AppendAuditEvent = %v", err)
			}
		}
		if _, err := st.DeleteAuditEventsBefore(ctx, "org-a", baseTime.Add(time.Hour)); err != nil {
			t.Fatalf("DeleteAuditEventsBefore = %v", err)
		}
		got, err = st.AuditOrgs(ctx)
		// org-a lost every event but keeps its chain: its anchor matters.
		if want := []string{"", "org-a", "org-b"}; err != nil || !slices.Equal(got, want) {
			t.Errorf("AuditOrgs = %q, %v; want %q", got, err, want)
		}
	})

	// A batch written again, as a writer does when the answer to a commit
	// that landed was lost, conflicts on the ids the first write gave
	// it: no row and no total counts twice.
	t.Run("RetriedBatch", func(t *testing.T) {
		st := newStore(t)
		t0 := time.Date(2031, 2, 1, 10, 0, 0, 0, time.UTC)
		batch := []keybridge.Usage{
			{OrgID: "org", Time: t0, Model: "m", Status: 200, InputTokens: 1},
			{OrgID: "org", Time: t0.Add(time.Minute), Model: "m", Status: 200, InputTokens: 2},
		}
		if err := st.InsertUsage(ctx, batch); err != nil {
			t.Fatalf("InsertUsage = %v", err)
		}
		err := st.InsertUsage(ctx, batch)
		baseCode(t, "InsertUsage(the same batch again)", err, keybridge.EConflict)
		// Rows written and a new one after them: still all or none.
		again := append(slices.Clone(batch), keybridge.Usage{OrgID: "org", Time: t0.Add(2 * time.Minute), Model: "m", Status: 200, InputTokens: 4})
		err = st.InsertUsage(ctx, again)
		baseCode(t, "InsertUsage(a batch holding a written row)", err, keybridge.EConflict)
		got, err := st.QueryUsage(ctx, keybridge.UsageQuery{OrgID: "org", GroupBy: keybridge.GroupByModel, Since: t0.Add(-48 * time.Hour), Until: t0.Add(48 * time.Hour)})
		if want := []keybridge.UsageGroup{{Key: "m", Requests: 2, InputTokens: 3}}; err != nil || !UsageEqual(got, want) {
			t.Errorf("QueryUsage after writing the batch again = %+v, %v; want %+v", got, err, want)
		}
	})

	t.Run("RollbackWithTransaction", func(t *testing.T) {
		st := newStore(t)
		t0 := time.Date(2031, 2, 1, 10, 0, 0, 0, time.UTC)
		boom := errors.New("boom")
		err := st.InTx(ctx, func(tx store.Store) error {
			if err := tx.InsertUsage(ctx, []keybridge.Usage{{OrgID: "org", Time: t0, Model: "m", Status: 200}}); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("InTx = %v, want %v", err, boom)
		}
		got, err := st.QueryUsage(ctx, keybridge.UsageQuery{OrgID: "org", GroupBy: keybridge.GroupByModel, Since: t0.Add(-48 * time.Hour), Until: t0.Add(48 * time.Hour)})
		if err != nil || len(got) != 0 {
			t.Errorf("QueryUsage after a rolled-back insert = %+v, %v; want nothing, neither rows nor totals", got, err)
		}
	})
}

// UsageRollupBackfill checks the migration that added failovers and
// latency to usage_rollup: on a store put back to the schema before it,
// holding usage, migrate must fill the new totals in from the raw rows so
// that every query answers as if they had been kept from the start.
func UsageRollupBackfill(t *testing.T, newStore Factory, migrate func(context.Context, *sqlstore.DB) error) {
	ctx := context.Background()
	st := newStore(t)
	r := rand.New(rand.NewPCG(5, 6))
	start := time.Date(2031, 5, 1, 7, 45, 0, 0, time.UTC)
	rows := usageRows(r, "org", 1500, start, 3*24*time.Hour)
	LegacyUsage(t, st, rows)
	raw := RawOf(t, st)
	for _, stmt := range []string{
		`ALTER TABLE usage_rollup DROP COLUMN failovers`,
		`ALTER TABLE usage_rollup DROP COLUMN latency_ms_sum`,
		`DELETE FROM schema_migrations WHERE version = 6`,
	} {
		if _, err := raw.DB.Exec(stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	if err := migrate(ctx, st.(*sqlstore.Store).DB()); err != nil {
		t.Fatalf("migrate = %v", err)
	}
	for _, by := range usageGroupBys {
		for _, b := range []keybridge.UsageBucket{keybridge.BucketNone, keybridge.BucketHour, keybridge.BucketDay} {
			usageCheck(t, st, rows, keybridge.UsageQuery{OrgID: "org", GroupBy: by, Since: start.Add(-time.Hour), Until: start.Add(4 * 24 * time.Hour), Bucket: b})
			usageCheck(t, st, rows, keybridge.UsageQuery{OrgID: "org", GroupBy: by, Since: start.Add(25 * time.Minute), Until: start.Add(50*time.Hour + 10*time.Minute), Bucket: b})
		}
	}
}

// LegacyUsage writes rows as releases before usage_batches did: their
// totals through InsertUsage, the raw rows one per request in usage, for
// tests of migrations and of databases upgraded from such a release. It
// takes the whole of usage_batches back out, so the store must hold no
// other packed rows.
func LegacyUsage(t testing.TB, st store.Store, rows []keybridge.Usage) {
	t.Helper()
	if err := st.InsertUsage(context.Background(), rows); err != nil {
		t.Fatalf("InsertUsage = %v", err)
	}
	raw := RawOf(t, st)
	if _, err := raw.DB.Exec(`DELETE FROM usage_batches`); err != nil {
		t.Fatal(err)
	}
	for i, u := range rows {
		id := u.ID
		if id == "" {
			id = fmt.Sprintf("legacy-%s-%06d", u.Time.Format("20060102150405.000000"), i)
		}
		var at any = u.Time.UnixMicro()
		if raw.Postgres {
			at = u.Time
		}
		raw.Exec(t, `INSERT INTO usage (id, time, org_id, project_id, user_id, api_key_id, ai_key_id, provider_id, provider_key_id,
			model, status, stream, latency_ms, upstream_latency_ms, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, failovers)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			id, at, u.OrgID, u.ProjectID, u.UserID, u.APIKeyID, u.AIKeyID, u.ProviderID, u.ProviderKeyID, u.Model,
			u.Status, u.Stream, u.LatencyMS, u.UpstreamLatencyMS, u.InputTokens, u.OutputTokens, u.CacheReadTokens, u.CacheWriteTokens, u.Failovers)
	}
}

// testUsageDeleteBefore checks retention, the first legacy rows written
// as LegacyUsage does.
func testUsageDeleteBefore(t *testing.T, newStore Factory, legacy int) {
	ctx := context.Background()
	st := newStore(t)
	r := rand.New(rand.NewPCG(3, 4))
	start := time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC)
	rows := usageRows(r, "org", 2000, start, 10*24*time.Hour)
	LegacyUsage(t, st, rows[:legacy])
	if err := st.InsertUsage(ctx, rows[legacy:]); err != nil {
		t.Fatalf("InsertUsage = %v", err)
	}
	// The cut is rounded down to its UTC day: rows from the start of
	// day 4 stay, and so do the daily and hourly totals that hold them.
	cut := start.Add(4*24*time.Hour + 15*time.Hour)
	day := start.Add(4 * 24 * time.Hour)
	var wantGone int64
	var kept []keybridge.Usage
	for _, u := range rows {
		if u.Time.Before(day) {
			wantGone++
		} else {
			kept = append(kept, u)
		}
	}
	n, err := st.DeleteUsageBefore(ctx, cut)
	if err != nil {
		t.Fatalf("DeleteUsageBefore = %v", err)
	}
	if n != wantGone {
		t.Errorf("DeleteUsageBefore = %d rows, want %d", n, wantGone)
	}
	for _, by := range usageGroupBys {
		// A window reaching back past the cut sees only what is kept:
		// the totals went with the rows.
		usageCheck(t, st, kept, keybridge.UsageQuery{OrgID: "org", GroupBy: by, Since: start.Add(-24 * time.Hour), Until: start.Add(11 * 24 * time.Hour)})
		usageCheck(t, st, kept, keybridge.UsageQuery{OrgID: "org", GroupBy: by, Since: day.Add(-90 * time.Minute), Until: day.Add(26 * time.Hour)})
		usageCheck(t, st, kept, keybridge.UsageQuery{OrgID: "org", GroupBy: by, Since: day.Add(-90 * time.Minute), Until: day.Add(26 * time.Hour), Bucket: keybridge.BucketDay})
	}
	if n, err := st.DeleteUsageBefore(ctx, cut); err != nil || n != 0 {
		t.Errorf("DeleteUsageBefore(again) = %d, %v; want 0", n, err)
	}
}
