package sqlstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// BenchmarkQueryUsage answers SPEC §7's usage query over 30 days of an org
// with 1,000,000 gateway requests spread over 35 days, on every engine the
// environment provides. Seeding goes through InsertUsage in batches, as the
// gateway writes. Run it alone:
//
//	go test ./internal/store/sqlstore -run '^$' -bench BenchmarkQueryUsage -benchtime 20x
func BenchmarkQueryUsage(b *testing.B) {
	const (
		rows  = 1_000_000
		batch = 5000
		org   = "org-bench"
	)
	until := time.Now().UTC()
	since := until.Add(-30 * 24 * time.Hour)
	for _, eng := range storetest.Engines() {
		b.Run(eng.Name, func(b *testing.B) {
			st := eng.New(b)
			start := time.Now()
			seedUsage(b, st, org, rows, batch, until.Add(-35*24*time.Hour), until)
			b.Logf("%s: seeded %d usage rows in %v", eng.Name, rows, time.Since(start).Round(time.Millisecond))
			for _, by := range []keybridge.UsageGroupBy{keybridge.GroupByProvider, keybridge.GroupByModel, keybridge.GroupByUser, keybridge.GroupByProject, keybridge.GroupByAPIKey} {
				b.Run(string(by), func(b *testing.B) {
					q := keybridge.UsageQuery{OrgID: org, GroupBy: by, Since: since, Until: until}
					var groups []keybridge.UsageGroup
					for b.Loop() {
						var err error
						if groups, err = st.QueryUsage(context.Background(), q); err != nil {
							b.Fatalf("QueryUsage = %v", err)
						}
					}
					var n int64
					for _, g := range groups {
						n += g.Requests
					}
					b.ReportMetric(float64(n), "requests/op")
					b.ReportMetric(float64(len(groups)), "groups/op")
				})
			}
			// A window inside one hour reads raw rows alone: the packed
			// rows of that hour, decoded and filtered.
			b.Run("raw-hour/model", func(b *testing.B) {
				hour := until.Add(-2 * time.Hour).Truncate(time.Hour)
				q := keybridge.UsageQuery{OrgID: org, GroupBy: keybridge.GroupByModel, Since: hour.Add(time.Minute), Until: hour.Add(59 * time.Minute)}
				var n int64
				for b.Loop() {
					groups, err := st.QueryUsage(context.Background(), q)
					if err != nil {
						b.Fatalf("QueryUsage = %v", err)
					}
					n = 0
					for _, g := range groups {
						n += g.Requests
					}
				}
				b.ReportMetric(float64(n), "requests/op")
			})
		})
	}
}

// seedUsage inserts n requests of org between from and to, in time order
// and in batches, with a realistic spread: a few providers, a dozen models,
// hundreds of users and keys, some failures.
func seedUsage(tb testing.TB, st store.Store, org string, n, batch int, from, to time.Time) {
	tb.Helper()
	r := rand.New(rand.NewPCG(7, 11))
	step := to.Sub(from) / time.Duration(n)
	buf := make([]keybridge.Usage, 0, batch)
	for i := range n {
		u := keybridge.Usage{
			Time:          from.Add(time.Duration(i) * step),
			OrgID:         org,
			ProviderID:    fmt.Sprint("provider-", r.IntN(4)),
			ProviderKeyID: fmt.Sprint("upstream-", r.IntN(8)),
			Model:         fmt.Sprint("model-", r.IntN(12)),
			Status:        []int{200, 200, 200, 200, 200, 200, 429, 500}[r.IntN(8)],
			Stream:        r.IntN(2) == 0,
			LatencyMS:     float64(r.IntN(3000)),
			InputTokens:   r.Int64N(4000),
			OutputTokens:  r.Int64N(1000),
		}
		if r.IntN(4) == 0 {
			u.AIKeyID = fmt.Sprint("aikey-", r.IntN(100))
			u.ProjectID = fmt.Sprint("project-", r.IntN(30))
		} else {
			u.UserID = fmt.Sprint("user-", r.IntN(200))
			u.APIKeyID = fmt.Sprint("apikey-", r.IntN(300))
		}
		buf = append(buf, u)
		if len(buf) == batch || i == n-1 {
			if err := st.InsertUsage(context.Background(), buf); err != nil {
				tb.Fatalf("InsertUsage = %v", err)
			}
			buf = buf[:0]
		}
	}
}

// TestQueryUsageOverSeededMonth checks that the benchmark's own data
// answers the same through the rollup as a plain count, on a smaller seed.
func TestQueryUsageOverSeededMonth(t *testing.T) {
	for _, eng := range storetest.Engines() {
		t.Run(eng.Name, func(t *testing.T) {
			st := eng.New(t)
			until := time.Date(2031, 7, 1, 13, 37, 0, 0, time.UTC)
			seedUsage(t, st, "org", 7_000, 1000, until.Add(-35*24*time.Hour), until)
			since := until.Add(-30 * 24 * time.Hour)
			total := func(by keybridge.UsageGroupBy) (n int64, keys []string) {
				groups, err := st.QueryUsage(context.Background(), keybridge.UsageQuery{OrgID: "org", GroupBy: by, Since: since, Until: until})
				if err != nil {
					t.Fatalf("QueryUsage(%s) = %v", by, err)
				}
				for _, g := range groups {
					n += g.Requests
					keys = append(keys, g.Key)
				}
				return n, keys
			}
			// The seed spaces rows evenly: 30 of 35 days hold 30/35 of them.
			want := int64(7_000 * 30 / 35)
			for _, by := range []keybridge.UsageGroupBy{keybridge.GroupByProvider, keybridge.GroupByModel, keybridge.GroupByUser, keybridge.GroupByProject, keybridge.GroupByAPIKey} {
				n, keys := total(by)
				if n < want-1 || n > want+1 {
					t.Errorf("QueryUsage(%s) counts %d requests, want %d±1", by, n, want)
				}
				if by == keybridge.GroupByModel && len(keys) != 12 {
					t.Errorf("QueryUsage(model) has %d groups, want 12: %v", len(keys), keys)
				}
				if by == keybridge.GroupByProject && !slices.Contains(keys, "") {
					t.Errorf("QueryUsage(project) has no group for requests without a project: %v", keys)
				}
			}
		})
	}
}

// BenchmarkInsertUsage writes one gateway flush: 500 rows of one org's
// traffic, as the recorder batches them.
//
//	go test ./internal/store/sqlstore -run '^$' -bench InsertUsage -benchmem
func BenchmarkInsertUsage(b *testing.B) {
	for _, eng := range storetest.Engines() {
		b.Run(eng.Name, func(b *testing.B) {
			st := eng.New(b)
			now := time.Now().UTC()
			batch := make([]keybridge.Usage, 500)
			// Ids as long as the real ones (UUIDs), a few keys and users.
			// They are made once, outside the measured loop: the gateway
			// hands the recorder strings it already holds, and formatting
			// them here cost a tenth of what the loop measured.
			id := func(kind string, n int) string { return fmt.Sprintf("0193b3c4-%04d-7abc-8def-%012d", n, len(kind)) }
			rows := make([]keybridge.Usage, len(batch))
			for i := range rows {
				rows[i] = keybridge.Usage{OrgID: id("org", 1), UserID: id("user", i%7), APIKeyID: id("key", i%7),
					ProviderID: id("provider", 1), ProviderKeyID: id("pk", i%3), Model: "gpt-4o-mini", Status: 200,
					LatencyMS: 1.5, UpstreamLatencyMS: 1.2, InputTokens: 10, OutputTokens: 20}
			}
			b.ReportAllocs()
			var ru0, ru1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			flush := now
			for b.Loop() {
				// Each flush is a second's new rows (InsertUsage gives them
				// their ids), as the recorder writes them.
				copy(batch, rows)
				for i := range batch {
					batch[i].Time = flush.Add(time.Duration(i) * 2 * time.Millisecond)
				}
				flush = flush.Add(time.Second)
				if err := st.InsertUsage(context.Background(), batch); err != nil {
					b.Fatal(err)
				}
			}
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*len(batch)), "cpu-µs/row")
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(batch)), "µs/row")
		})
	}
}

// TestUsagePlansUseKey checks, in SQLite, that every statement on raw usage
// rows finds them by a range of its table's key rather than by a scan: raw
// usage is the largest data by far, and a scan of it holds the writer
// (retention's purge) or a reader (a usage query) for as long as it lasts.
func TestUsagePlansUseKey(t *testing.T) {
	st := storetest.SQLite(t).(*sqlstore.Store)
	for _, q := range []struct {
		name, sql string
		args      []any
		table     string // what each statement must search by its key
		key       string // the key's first columns, as the plan names them
	}{
		{"query's packed rows", sqlstore.UsageBatchesOfHour, []any{"org", 0}, "usage_batches", "(org_id=? AND hour=?)"},
		{"retention's purge of packed rows", sqlstore.UsageBatchesDeleteSQL, []any{"org", "org", 1, 20}, "usage_batches", "(org_id=? AND hour<?)"},
		{"query's older raw rows", `SELECT model, latency_ms ` + sqlstore.UsageRawFrom, []any{"org", 0, 1}, "usage", "(org_id=? AND time"},
		{"retention's purge of older raw rows", sqlstore.UsageDeleteSQL, []any{"org", "org", 1, 5000}, "usage", "(org_id=? AND time"},
	} {
		rows, err := st.DB().Write.Query(`EXPLAIN QUERY PLAN `+q.sql, q.args...)
		if err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notUsed int
			var detail string
			if err := rows.Scan(&id, &parent, &notUsed, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		searches := 0
		for _, line := range plan {
			if line == "SCAN "+q.table || strings.HasPrefix(line, "SCAN "+q.table+" ") {
				t.Errorf("%s scans %s: %q", q.name, q.table, plan)
			}
			if strings.HasPrefix(line, "SEARCH "+q.table+" USING ") && strings.Contains(line, q.key) {
				searches++
			}
		}
		if searches == 0 {
			t.Errorf("%s does not search %s by %s: %q", q.name, q.table, q.key, plan)
		}
	}
}
