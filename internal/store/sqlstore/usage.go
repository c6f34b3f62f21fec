package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Usage is kept twice: the raw rows (one per gateway request, packed in
// usage_batches, see usage_pack.go) and, in the same transaction, per-org
// totals per group-by dimension per hour and per UTC day (usage_rollup). A query over [since, until) reads whole days from
// the daily totals, the whole hours around them from the hourly totals, and
// only the partial hours at both ends from the raw rows, so its cost
// follows the number of groups and days, not the number of requests: a
// 30-day group-by over a million requests reads a few thousand rows.

const (
	usageDay = 24 * time.Hour
	// usageBatchRows raw rows at most go in one usage_batches row, so
	// that reading one back never holds more than that many.
	usageBatchRows = 500
	// usageRollupChunk rollup rows go in one upsert (13 parameters a row).
	usageRollupChunk = 500
	// usageDeleteChunk raw rows of usage, or usageDeleteBatches of
	// usage_batches, are deleted per transaction, so retention never
	// holds SQLite's single writer for long. A batch holds up to 500 rows
	// of a busy org, or one or two of a quiet one: the writer is held for
	// a few milliseconds at most either way.
	usageDeleteChunk   = 5000
	usageDeleteBatches = 200
)

// usageDims lists the group-by dimensions with the SQL expression that
// gives a raw row's group key. A request made with an AI key has no
// platform key, so api_key groups by whichever key made the request.
var usageDims = []struct {
	by  keybridge.UsageGroupBy
	sql string
}{
	{keybridge.GroupByProvider, "provider_id"},
	{keybridge.GroupByModel, "model"},
	{keybridge.GroupByUser, "user_id"},
	{keybridge.GroupByProject, "project_id"},
	{keybridge.GroupByAPIKey, "CASE WHEN api_key_id <> '' THEN api_key_id ELSE ai_key_id END"},
}

// usageGroupKey is the Go twin of the SQL expressions in usageDims: the
// group key of u under usageDims[dim].
func usageGroupKey(u *keybridge.Usage, dim int) string {
	switch usageDims[dim].by {
	case keybridge.GroupByProvider:
		return u.ProviderID
	case keybridge.GroupByModel:
		return u.Model
	case keybridge.GroupByUser:
		return u.UserID
	case keybridge.GroupByProject:
		return u.ProjectID
	case keybridge.GroupByAPIKey:
		if u.APIKeyID != "" {
			return u.APIKeyID
		}
		return u.AIKeyID
	}
	return ""
}

// usageRollupKey names one row of usage_rollup. It is a map key built
// five times per raw row, so it holds no more strings than it must: the
// dimension is its index in usageDims, the bucket its start in Unix
// microseconds.
type usageRollupKey struct {
	org    string
	key    string
	bucket int64
	dim    uint8
	day    bool // period "d"; else "h"
}

func (k usageRollupKey) period() string {
	if k.day {
		return "d"
	}
	return "h"
}

// compareUsageRollupKeys orders keys as usage_rollup's primary key does:
// org, dimension, period, bucket, key.
func compareUsageRollupKeys(a, b usageRollupKey) int {
	return cmp.Or(cmp.Compare(a.org, b.org), cmp.Compare(usageDims[a.dim].by, usageDims[b.dim].by),
		cmp.Compare(a.period(), b.period()), cmp.Compare(a.bucket, b.bucket), cmp.Compare(a.key, b.key))
}

// usageSums are the additive totals of some requests: what a rollup row
// holds, and what every answer is computed from.
type usageSums struct {
	requests, errors, input, output, cacheRead, cacheWrite, failovers int64
	latencyMS                                                         float64
}

// add adds one request.
func (t *usageSums) add(u *keybridge.Usage) {
	t.requests++
	if u.Status >= 400 {
		t.errors++
	}
	t.input += u.InputTokens
	t.output += u.OutputTokens
	t.cacheRead += u.CacheReadTokens
	t.cacheWrite += u.CacheWriteTokens
	t.failovers += int64(u.Failovers)
	t.latencyMS += u.LatencyMS
}

// merge adds o's totals.
func (t *usageSums) merge(o *usageSums) {
	t.requests += o.requests
	t.errors += o.errors
	t.input += o.input
	t.output += o.output
	t.cacheRead += o.cacheRead
	t.cacheWrite += o.cacheWrite
	t.failovers += o.failovers
	t.latencyMS += o.latencyMS
}

// latencyAvg is the mean latency, 0 without requests. The gateway
// measures latencies in whole microseconds, so their sum is a whole
// number of them; each engine adds floats in its own order and way
// (SQLite compensates, PostgreSQL does not), leaving different last bits.
// Rounded back to microseconds, the sum is the same on every engine, and
// so is the mean the API answers.
func (t *usageSums) latencyAvg() float64 {
	if t.requests == 0 {
		return 0
	}
	return math.Round(t.latencyMS*1000) / 1000 / float64(t.requests)
}

func (t *usageSums) group(key string) keybridge.UsageGroup {
	return keybridge.UsageGroup{Key: key, Requests: t.requests, Errors: t.errors, InputTokens: t.input, OutputTokens: t.output,
		CacheReadTokens: t.cacheRead, CacheWriteTokens: t.cacheWrite, Failovers: t.failovers, LatencyMSAvg: t.latencyAvg()}
}

func (t *usageSums) point(start time.Time) keybridge.UsagePoint {
	return keybridge.UsagePoint{Start: start, Requests: t.requests, Errors: t.errors, InputTokens: t.input, OutputTokens: t.output,
		CacheReadTokens: t.cacheRead, CacheWriteTokens: t.cacheWrite, Failovers: t.failovers, LatencyMSAvg: t.latencyAvg()}
}

// InsertUsage implements store.UsageStore. Rows without a time get the
// transaction's. The raw rows go packed, one usage_batches row per org and
// hour and at most usageBatchRows rows (see usage_pack.go), named by their
// first row's ID, which it is given if it has none: a retried batch whose
// commit did land is refused whole as a conflict. The raw rows and the
// rollup totals are written in one transaction, so a query never sees one
// without the other.
func (s *Store) InsertUsage(ctx context.Context, batch []keybridge.Usage) error {
	if len(batch) == 0 {
		return nil
	}
	// The rollup upserts are prepared once in SQLite: parsing a few rows'
	// upsert costs it as much as running it.
	var st usageStmts
	if s.tx == nil {
		var err error
		if st, err = s.prepareUsage(ctx); err != nil {
			return err
		}
	}
	return s.write(ctx, func(tx *Store) error {
		// One map lookup per dimension per row: an hour's totals point to
		// their day's, which are added to row by row as before.
		rollup := map[usageRollupKey]*usageTotals{}
		type packKey struct {
			org  string
			hour int64
		}
		// Rows come in runs of one org and hour, and often of one
		// provider or model: each lookup is tried first on the previous
		// row's, before the maps.
		var packKeys []packKey
		var packs [][]*keybridge.Usage
		packOf := map[packKey]int{}
		lastPack := -1
		type hit struct {
			k usageRollupKey
			g *usageTotals
		}
		last := make([]hit, len(usageDims))
		for i := range batch {
			u := &batch[i]
			if u.Time.IsZero() {
				u.Time = tx.Now()
			}
			u.Time = u.Time.UTC().Truncate(time.Microsecond)
			hour := u.Time.Truncate(time.Hour).UnixMicro()
			pk := packKey{u.OrgID, hour}
			if lastPack < 0 || packKeys[lastPack] != pk {
				n, ok := packOf[pk]
				if !ok {
					n = len(packs)
					packOf[pk] = n
					packKeys, packs = append(packKeys, pk), append(packs, nil)
				}
				lastPack = n
			}
			packs[lastPack] = append(packs[lastPack], u)
			for d := range usageDims {
				k := usageRollupKey{org: u.OrgID, key: usageGroupKey(u, d), bucket: hour, dim: uint8(d)}
				g := last[d].g
				if g == nil || last[d].k != k {
					if g = rollup[k]; g == nil {
						g = &usageTotals{}
						rollup[k] = g
						dk := k
						dk.day, dk.bucket = true, time.UnixMicro(hour).UTC().Truncate(usageDay).UnixMicro()
						if g.day = rollup[dk]; g.day == nil {
							g.day = &usageTotals{}
							rollup[dk] = g.day
						}
					}
					last[d] = hit{k, g}
				}
				g.add(u)
				g.day.add(u)
			}
		}
		blob := make([]byte, 0, 64*min(len(batch), usageBatchRows))
		for n, pk := range packKeys {
			for rows := range slices.Chunk(packs[n], usageBatchRows) {
				if rows[0].ID == "" {
					rows[0].ID = newID()
				}
				blob = packUsage(blob[:0], pk.hour, rows)
				if err := tx.insertUsageBatch(ctx, st.insert, pk.org, pk.hour, rows[0].ID, len(rows), blob); err != nil {
					// Only a name can conflict, and names are the IDs
					// given at a first try: that try committed.
					return tx.conflict(fmt.Errorf("insert usage: %w", err), "usage rows already written")
				}
			}
		}
		// Upserts in key order: two replicas flushing at once take the
		// rollup rows' locks in the same order and cannot deadlock.
		keys := slices.SortedFunc(maps.Keys(rollup), compareUsageRollupKeys)
		for len(keys) > 0 {
			n, stmt := min(len(keys), usageRollupChunk), (*sql.Stmt)(nil)
			for i, size := range usageUpsertSizes {
				if st.upserts[i] != nil && n >= size {
					n, stmt = size, st.upserts[i]
					break
				}
			}
			if err := tx.upsertUsageRollup(ctx, keys[:n], rollup, stmt); err != nil {
				return fmt.Errorf("update usage rollup: %w", err)
			}
			keys = keys[n:]
		}
		return nil
	})
}

// usageUpsertSizes are the sizes, in rows, of the rollup upserts
// prepared in SQLite, largest first: a batch's rollup rows go in as few of
// them as add up to their number. PostgreSQL gets one upsert of all of
// them instead: there each statement is a round trip, and pgx already
// keeps the statements it parsed.
var usageUpsertSizes = [...]int{16, 4, 1}

// usageUpsertFixed are the upserts of usageUpsertSizes rollup rows.
var usageUpsertFixed = func() (q [len(usageUpsertSizes)]string) {
	for i, n := range usageUpsertSizes {
		q[i] = usageUpsertSQL(n)
	}
	return q
}()

// usageBatchInsert writes one usage_batches row.
const usageBatchInsert = `INSERT INTO usage_batches (org_id, hour, id, rows, data) VALUES (?, ?, ?, ?, ?)`

// insertUsageBatch writes one usage_batches row in the transaction s, with
// stmt when prepared.
func (s *Store) insertUsageBatch(ctx context.Context, stmt *sql.Stmt, org string, hour int64, id string, rows int, data []byte) error {
	return s.execPrepared(ctx, stmt, usageBatchInsert, org, s.ts(time.UnixMicro(hour)), id, rows, data)
}

// execPrepared runs, in the transaction s, stmt when prepared, else query.
func (s *Store) execPrepared(ctx context.Context, stmt *sql.Stmt, query string, args ...any) error {
	var err error
	if stmt != nil {
		_, err = s.tx.StmtContext(ctx, stmt).ExecContext(ctx, args...)
	} else {
		_, err = s.exec(ctx, query, args...)
	}
	return err
}

// usageStmts are InsertUsage's prepared statements, nil where not
// prepared: in SQLite, the insert of a usage_batches row and the upserts
// of usageUpsertSizes rollup rows. PostgreSQL's pgx keeps the statements
// it parsed already.
type usageStmts struct {
	insert  *sql.Stmt
	upserts [len(usageUpsertSizes)]*sql.Stmt
}

// prepareUsage prepares, in SQLite, InsertUsage's statements; outside a
// transaction only (see prepare).
func (s *Store) prepareUsage(ctx context.Context) (usageStmts, error) {
	var st usageStmts
	if s.db.Dialect.Name != "sqlite" {
		return st, nil
	}
	var err error
	if st.insert, err = s.prepare(ctx, usageBatchInsert); err != nil {
		return st, fmt.Errorf("prepare usage insert: %w", err)
	}
	for i, q := range usageUpsertFixed {
		if st.upserts[i], err = s.prepare(ctx, q); err != nil {
			return st, fmt.Errorf("prepare usage rollup upsert: %w", err)
		}
	}
	return st, nil
}

// usageTotals are the totals of one rollup row in the making; an hour's
// point to its day's.
type usageTotals struct {
	usageSums
	day *usageTotals
}

// upsertUsageRollup adds the totals of keys to usage_rollup in the
// transaction s, with stmt (when prepared) made for len(keys) rows.
func (s *Store) upsertUsageRollup(ctx context.Context, keys []usageRollupKey, totals map[usageRollupKey]*usageTotals, stmt *sql.Stmt) error {
	args := make([]any, 0, len(keys)*13)
	for _, k := range keys {
		g := totals[k]
		args = append(args, k.org, string(usageDims[k.dim].by), k.period(), s.ts(time.UnixMicro(k.bucket)), k.key,
			g.requests, g.errors, g.input, g.output, g.cacheRead, g.cacheWrite, g.failovers, g.latencyMS)
	}
	query := "" // built only when not prepared
	if stmt == nil {
		query = usageUpsertSQL(len(keys))
	}
	return s.execPrepared(ctx, stmt, query, args...)
}

// usageUpsertSQL is the upsert of n rollup rows.
func usageUpsertSQL(n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO usage_rollup (org_id, dim, period, bucket, key, requests, errors, input_tokens, output_tokens,
		cache_read_tokens, cache_write_tokens, failovers, latency_ms_sum) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
	}
	b.WriteString(` ON CONFLICT (org_id, dim, period, bucket, key) DO UPDATE SET
		requests = usage_rollup.requests + excluded.requests,
		errors = usage_rollup.errors + excluded.errors,
		input_tokens = usage_rollup.input_tokens + excluded.input_tokens,
		output_tokens = usage_rollup.output_tokens + excluded.output_tokens,
		cache_read_tokens = usage_rollup.cache_read_tokens + excluded.cache_read_tokens,
		cache_write_tokens = usage_rollup.cache_write_tokens + excluded.cache_write_tokens,
		failovers = usage_rollup.failovers + excluded.failovers,
		latency_ms_sum = usage_rollup.latency_ms_sum + excluded.latency_ms_sum`)
	return b.String()
}

// usageSpan is a half-open time range [from, to).
type usageSpan struct{ from, to time.Time }

func (r usageSpan) empty() bool { return !r.from.Before(r.to) }

// usagePlan splits [since, until) into whole UTC days, whole hours and
// partial hours, the three sources a query reads. Each raw span lies
// within one hour, so that its rows share one hourly bucket.
type usagePlan struct {
	days  usageSpan
	hours [2]usageSpan
	raw   [2]usageSpan
}

// ceilTrunc rounds t up to a multiple of d.
func ceilTrunc(t time.Time, d time.Duration) time.Time {
	f := t.Truncate(d)
	if f.Equal(t) {
		return f
	}
	return f.Add(d)
}

// planUsage plans [since, until); without days, whole days are read as
// hours too (an hourly series needs them).
func planUsage(since, until time.Time, days bool) usagePlan {
	var p usagePlan
	hs, he := ceilTrunc(since, time.Hour), until.Truncate(time.Hour)
	if !hs.Before(he) {
		// No whole hour: at most the end of one hour and the start of
		// the next.
		if hs.Before(until) {
			p.raw = [2]usageSpan{{since, hs}, {hs, until}}
		} else {
			p.raw[0] = usageSpan{since, until}
		}
		return p
	}
	p.raw = [2]usageSpan{{since, hs}, {he, until}}
	ds, de := ceilTrunc(hs, usageDay), he.Truncate(usageDay)
	if !days || !ds.Before(de) {
		p.hours[0] = usageSpan{hs, he}
		return p
	}
	p.hours = [2]usageSpan{{hs, ds}, {de, he}}
	p.days = usageSpan{ds, de}
	return p
}

// usageRawFrom is where a usage query reads the raw rows written before
// usage_batches: one org over a time range, a range of the primary key of
// usage in SQLite, of usage_org_time in PostgreSQL.
const usageRawFrom = `FROM usage WHERE org_id = ? AND time >= ? AND time < ?`

// QueryUsage implements store.UsageStore. A zero Until means now and a zero
// Since means 30 days before Until. Groups come most requests first, then
// by key; the key is "" for requests without that dimension (a request
// made with an AI key has no user, one made with a platform key no project).
// With a Bucket, each group also has its series: one point per hour or UTC
// day that has requests, oldest first, the first and last clipped to the
// window. EInvalid for an unknown GroupBy or Bucket.
func (s *Store) QueryUsage(ctx context.Context, q keybridge.UsageQuery) ([]keybridge.UsageGroup, error) {
	expr, dim := "", 0
	for i, d := range usageDims {
		if d.by == q.GroupBy {
			expr, dim = d.sql, i
		}
	}
	if expr == "" {
		return nil, keybridge.FieldError("group_by", "must be provider, model, user, project or api_key")
	}
	var width time.Duration
	switch q.Bucket {
	case keybridge.BucketNone:
	case keybridge.BucketHour:
		width = time.Hour
	case keybridge.BucketDay:
		width = usageDay
	default:
		return nil, keybridge.FieldError("bucket", "must be hour or day")
	}
	until := q.Until
	if until.IsZero() {
		until = s.Now()
	}
	since := q.Since
	if since.IsZero() {
		since = until.Add(-30 * usageDay)
	}
	since, until = since.UTC().Truncate(time.Microsecond), until.UTC().Truncate(time.Microsecond)
	if !since.Before(until) {
		return []keybridge.UsageGroup{}, nil
	}
	p := planUsage(since, until, width != time.Hour)
	series := width != 0

	// With a series, every arm also gives the hour or day its totals
	// belong to: the rollup's bucket, or for raw rows the start of the one
	// hour their span lies in.
	bucketCol, rawBucket, groupBy := "", "", "key"
	if series {
		bucketCol, groupBy = "bucket, ", "key, bucket"
		rawBucket = "CAST(? AS INTEGER) AS bucket, "
		if s.db.Dialect.Name != "sqlite" {
			rawBucket = "CAST(? AS TIMESTAMPTZ) AS bucket, "
		}
	}
	const sums = `requests, errors, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, failovers, latency_ms_sum`
	var arms []string
	var args []any
	rollupArm := func(period string, r usageSpan) {
		if r.empty() {
			return
		}
		arms = append(arms, `SELECT key, `+bucketCol+sums+` FROM usage_rollup WHERE org_id = ? AND dim = ? AND period = ? AND bucket >= ? AND bucket < ?`)
		args = append(args, q.OrgID, string(q.GroupBy), period, s.ts(r.from), s.ts(r.to))
	}
	// Raw rows written before usage_batches are still in usage, until
	// retention removes them; the packed ones are added below.
	rawArm := func(r usageSpan) {
		if r.empty() {
			return
		}
		arms = append(arms, `SELECT `+expr+` AS key, `+rawBucket+`1 AS requests, CASE WHEN status >= 400 THEN 1 ELSE 0 END AS errors,
			input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, failovers, latency_ms AS latency_ms_sum `+usageRawFrom)
		if series {
			args = append(args, s.ts(r.from.Truncate(time.Hour)))
		}
		args = append(args, q.OrgID, s.ts(r.from), s.ts(r.to))
	}
	rollupArm("d", p.days)
	for _, r := range p.hours {
		rollupArm("h", r)
	}
	for _, r := range p.raw {
		rawArm(r)
	}
	// CAST: PostgreSQL sums BIGINTs into NUMERIC.
	query := `SELECT key, ` + bucketCol + `CAST(SUM(requests) AS BIGINT), CAST(SUM(errors) AS BIGINT), CAST(SUM(input_tokens) AS BIGINT),
		CAST(SUM(output_tokens) AS BIGINT), CAST(SUM(cache_read_tokens) AS BIGINT), CAST(SUM(cache_write_tokens) AS BIGINT),
		CAST(SUM(failovers) AS BIGINT), SUM(latency_ms_sum)
		FROM (` + strings.Join(arms, " UNION ALL ") + `) t GROUP BY ` + groupBy
	type point struct {
		key   string
		start time.Time
	}
	totals := map[string]*usageSums{}
	points := map[point]*usageSums{}
	// add adds t to key's totals and, with a series, to its point of the
	// hour or day bucket falls in: hourly totals and raw rows fold into
	// their day.
	add := func(key string, bucket time.Time, t *usageSums) {
		g := totals[key]
		if g == nil {
			g = &usageSums{}
			totals[key] = g
		}
		g.merge(t)
		if series {
			k := point{key, bucket.Truncate(width)}
			pt := points[k]
			if pt == nil {
				pt = &usageSums{}
				points[k] = pt
			}
			pt.merge(t)
		}
	}
	rows, err := s.query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("query usage: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			key    string
			bucket time.Time
			t      usageSums
		)
		dest := []any{&key, &t.requests, &t.errors, &t.input, &t.output, &t.cacheRead, &t.cacheWrite, &t.failovers, &t.latencyMS}
		if series {
			dest = slices.Insert(dest, 1, any(timeCol{&bucket}))
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		add(key, bucket, &t)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()
	// The packed raw rows are read after the totals, not in their
	// snapshot: a batch that commits in between counts in the partial
	// hours and not yet in the whole ones. No request counts twice, and
	// the next query sees the batch whole.
	for _, r := range p.raw {
		if r.empty() {
			continue
		}
		// A raw span lies within one hour: its rows are in that hour's
		// batches, and one point of it.
		hour := r.from.Truncate(time.Hour)
		sums := map[string]*usageSums{}
		err := s.unpackUsageHour(ctx, q.OrgID, hour, func(u *keybridge.Usage) {
			if u.Time.Before(r.from) || !u.Time.Before(r.to) {
				return
			}
			key := usageGroupKey(u, dim)
			t := sums[key]
			if t == nil {
				t = &usageSums{}
				sums[key] = t
			}
			t.add(u)
		})
		if err != nil {
			return nil, fmt.Errorf("query usage: %w", err)
		}
		for key, t := range sums {
			add(key, hour, t)
		}
	}
	out := make([]keybridge.UsageGroup, 0, len(totals))
	index := make(map[string]int, len(totals))
	for key, t := range totals {
		index[key] = len(out)
		out = append(out, t.group(key))
	}
	if series {
		for k, t := range points {
			g := &out[index[k.key]]
			g.Series = append(g.Series, t.point(k.start))
		}
		for i := range out {
			slices.SortFunc(out[i].Series, func(a, b keybridge.UsagePoint) int { return a.Start.Compare(b.Start) })
		}
	}
	// Sorted here rather than in SQL: byte order of keys is the same on
	// both engines, whatever collation the database uses.
	slices.SortFunc(out, func(a, b keybridge.UsageGroup) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), strings.Compare(a.Key, b.Key))
	})
	return out, nil
}

// usageBatchesOfHour reads one org's packed raw rows of one hour: a range
// of usage_batches' primary key. usageBatchesDeleteSQL deletes a chunk of
// one org's before a cut, found by the same key, and gives how many raw
// rows each held.
const (
	usageBatchesOfHour    = `SELECT data FROM usage_batches WHERE org_id = ? AND hour = ?`
	usageBatchesDeleteSQL = `DELETE FROM usage_batches WHERE org_id = ? AND (hour, id) IN
		(SELECT hour, id FROM usage_batches WHERE org_id = ? AND hour < ? LIMIT ?) RETURNING rows`
)

// unpackUsageHour calls fn with each raw row of org filed under hour.
func (s *Store) unpackUsageHour(ctx context.Context, org string, hour time.Time, fn func(u *keybridge.Usage)) error {
	rows, err := s.query(ctx, usageBatchesOfHour, org, s.ts(hour))
	if err != nil {
		return err
	}
	defer rows.Close()
	var blob sql.RawBytes // unpackUsage copies what it keeps
	for rows.Next() {
		if err := rows.Scan(&blob); err != nil {
			return err
		}
		if err := unpackUsage(blob, org, hour, fn); err != nil {
			return err
		}
	}
	return rows.Err()
}

// DeleteUsageBefore implements store.UsageStore. t is rounded down to the
// start of its UTC day, so that the raw rows and the hourly and daily
// totals always cover the same span and every query stays exact; usage is
// therefore kept up to a day longer than asked. The raw rows go in chunks,
// each its own transaction (outside a caller's), so a large purge never
// holds the writer for long. It returns how many raw rows went.
func (s *Store) DeleteUsageBefore(ctx context.Context, t time.Time) (int64, error) {
	cut := s.ts(t.UTC().Truncate(usageDay))
	// Raw rows are ordered by org and time only (an index on time alone
	// would cost every insert for a purge that runs once an hour), so the
	// purge goes org by org. Every raw row has daily totals, which go
	// last: an interrupted purge still finds its orgs next time.
	orgs, err := s.usageOrgsBefore(ctx, cut)
	if err != nil {
		return 0, fmt.Errorf("delete usage: %w", err)
	}
	var total int64
	for _, org := range orgs {
		for _, del := range [...]func(tx *Store, ctx context.Context, org string, cut any) (rows int64, more bool, err error){
			(*Store).deleteUsageBatches, (*Store).deleteLegacyUsage,
		} {
			for more := true; more; {
				var n int64
				err := s.write(ctx, func(tx *Store) (err error) {
					n, more, err = del(tx, ctx, org, cut)
					return err
				})
				if err != nil {
					return total, fmt.Errorf("delete usage: %w", err)
				}
				total += n
				if err := ctx.Err(); err != nil {
					return total, err
				}
			}
		}
	}
	if _, err := s.exec(ctx, `DELETE FROM usage_rollup WHERE bucket < ?`, cut); err != nil {
		return total, fmt.Errorf("delete usage rollup: %w", err)
	}
	return total, nil
}

// deleteUsageBatches deletes, in the transaction s, up to
// usageDeleteBatches of org's packed raw rows before cut (an hour's
// start), and reports how many raw rows they held and whether there may
// be more.
func (s *Store) deleteUsageBatches(ctx context.Context, org string, cut any) (int64, bool, error) {
	rows, err := s.query(ctx, usageBatchesDeleteSQL, org, org, cut, usageDeleteBatches)
	if err != nil {
		return 0, false, err
	}
	defer rows.Close()
	var total, n, batches int64
	for rows.Next() {
		if err := rows.Scan(&n); err != nil {
			return 0, false, err
		}
		total += n
		batches++
	}
	return total, batches == usageDeleteBatches, rows.Err()
}

// deleteLegacyUsage deletes, in the transaction s, up to usageDeleteChunk
// of org's raw rows before cut in usage, where they were written before
// usage_batches, and reports how many went and whether there may be more.
// The rows are named by (org, time, id), the primary key of usage in
// SQLite, so that each is found by its key rather than by a scan of the
// table; in PostgreSQL, where usage keeps its primary key on id, by id:
// there the (time, id) form would read every row of the org for each
// chunk.
func (s *Store) deleteLegacyUsage(ctx context.Context, org string, cut any) (int64, bool, error) {
	query, args := usageDeleteSQL, []any{org, org, cut, usageDeleteChunk}
	if s.db.Dialect.Name != "sqlite" {
		query, args = usageDeleteByIDSQL, []any{org, cut, usageDeleteChunk}
	}
	res, err := s.exec(ctx, query, args...)
	if err != nil {
		return 0, false, err
	}
	n, err := res.RowsAffected()
	return n, n == usageDeleteChunk, err
}

// usageDeleteSQL and usageDeleteByIDSQL are deleteLegacyUsage's deletes.
const (
	usageDeleteSQL     = `DELETE FROM usage WHERE org_id = ? AND (time, id) IN (SELECT time, id FROM usage WHERE org_id = ? AND time < ? LIMIT ?)`
	usageDeleteByIDSQL = `DELETE FROM usage WHERE id IN (SELECT id FROM usage WHERE org_id = ? AND time < ? LIMIT ?)`
)

// usageOrgsBefore lists the orgs with daily totals before cut: every org
// with raw rows before it.
func (s *Store) usageOrgsBefore(ctx context.Context, cut any) ([]string, error) {
	return s.queryStrings(ctx, `SELECT DISTINCT org_id FROM usage_rollup WHERE period = 'd' AND bucket < ?`, cut)
}
