package sqlstore_test

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/sqlstore"
)

// packRows are rows of one org within one hour with every field set,
// edge values among them.
func packRows(r *rand.Rand, hour time.Time, n int) []keybridge.Usage {
	words := []string{"", "provider-a", "model-ü", "gpt-4o-mini", "0193b3c4-0001-7abc-8def-000000000003", "\x00odd\xff"}
	rows := make([]keybridge.Usage, n)
	for i := range rows {
		w := func() string { return words[r.IntN(len(words))] }
		rows[i] = keybridge.Usage{
			OrgID: "org", Time: hour.Add(time.Duration(r.Int64N(int64(time.Hour)))).Truncate(time.Microsecond),
			ProjectID: w(), UserID: w(), APIKeyID: w(), AIKeyID: w(), ProviderID: w(), ProviderKeyID: w(), Model: w(),
			Status: []int{200, 429, 499, 500, 0}[i%5], Stream: i%2 == 0,
			LatencyMS: r.Float64() * 1000, UpstreamLatencyMS: r.Float64() * 900,
			InputTokens: r.Int64N(1 << 40), OutputTokens: r.Int64N(100000), CacheReadTokens: int64(i), CacheWriteTokens: int64(i % 3),
			Failovers: i % 4,
		}
	}
	rows[0].Time = hour
	rows[n-1].Time = hour.Add(time.Hour - time.Microsecond)
	rows[1].InputTokens, rows[1].OutputTokens, rows[1].LatencyMS = math.MaxInt64, -1, math.Inf(1)
	return rows
}

func ptrs(rows []keybridge.Usage) []*keybridge.Usage {
	out := make([]*keybridge.Usage, len(rows))
	for i := range rows {
		out[i] = &rows[i]
	}
	return out
}

// TestUsagePackRoundTrip checks that every field of every row comes back
// as it went in, in order, and that no prefix of a blob decodes.
func TestUsagePackRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	hour := time.Date(2031, 3, 1, 5, 0, 0, 0, time.UTC)
	rows := packRows(r, hour, 300)
	blob := sqlstore.PackUsage(nil, hour.UnixMicro(), ptrs(rows))
	var got []keybridge.Usage
	if err := sqlstore.UnpackUsage(blob, "org", hour, func(u *keybridge.Usage) { got = append(got, *u) }); err != nil {
		t.Fatalf("UnpackUsage = %v", err)
	}
	if len(got) != len(rows) {
		t.Fatalf("UnpackUsage gave %d rows, want %d", len(got), len(rows))
	}
	for i := range rows {
		if got[i] != rows[i] {
			t.Fatalf("row %d = %+v, want %+v", i, got[i], rows[i])
		}
	}
	if per := len(blob) / len(rows); per > 60 {
		t.Errorf("%d bytes a row, want a few dozen", per)
	}
	for n := range len(blob) {
		if err := sqlstore.UnpackUsage(blob[:n], "org", hour, func(*keybridge.Usage) {}); err == nil {
			t.Fatalf("UnpackUsage(first %d of %d bytes) = nil error", n, len(blob))
		}
	}
	if err := sqlstore.UnpackUsage(append(blob, 0), "org", hour, func(*keybridge.Usage) {}); err == nil {
		t.Error("UnpackUsage(blob and a trailing byte) = nil error")
	}
}

// FuzzUnpackUsage checks that no blob makes UnpackUsage panic or run away.
//
//	go test ./internal/store/sqlstore -run '^$' -fuzz FuzzUnpackUsage -fuzztime 1m
func FuzzUnpackUsage(f *testing.F) {
	hour := time.Date(2031, 3, 1, 5, 0, 0, 0, time.UTC)
	f.Add(sqlstore.PackUsage(nil, hour.UnixMicro(), ptrs(packRows(rand.New(rand.NewPCG(3, 4)), hour, 5))))
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, blob []byte) {
		n := 0
		err := sqlstore.UnpackUsage(blob, "org", hour, func(*keybridge.Usage) { n++ })
		// A row takes 24 bytes at least.
		if n > len(blob)/24 {
			t.Fatalf("%d rows out of %d bytes", n, len(blob))
		}
		_ = err
	})
}
