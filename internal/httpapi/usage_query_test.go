package httpapi_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// TestUsageSameAnswerOnEveryEngine: the usage API answers the same bytes
// over SQLite and PostgreSQL for the same rows, mean latencies included,
// whatever the grouping, the series and the window (whole days, whole
// hours, partial hours at both ends, an offset other than Z).
func TestUsageSameAnswerOnEveryEngine(t *testing.T) {
	engines := storetest.Engines()
	if len(engines) < 2 {
		t.Skip("needs PostgreSQL: set " + storetest.PostgresURLEnv)
	}
	day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -5)
	r := rand.New(rand.NewPCG(7, 11))
	var envs []*env
	for _, eng := range engines {
		envs = append(envs, newEnv(t, eng.New(t)))
	}
	rows := make([]keybridge.Usage, 0, 1200)
	for range cap(rows) {
		u := keybridge.Usage{
			Time:       day.Add(time.Duration(r.Int64N(int64(3 * 24 * time.Hour)))).Truncate(time.Microsecond),
			ProviderID: fmt.Sprint("prov-", r.IntN(3)),
			// Names that differ only in case, accents or a space are
			// other models on every engine.
			Model:  []string{"model-0", "Model-0", "model-0 ", "modèle-0", "modele-0", "模型"}[r.IntN(6)],
			Status: []int{200, 200, 200, 400, 429, 499, 502}[r.IntN(7)],
			// As the gateway measures them: whole microseconds in ms.
			LatencyMS:    float64(r.Int64N(3_000_000)) / 1000,
			InputTokens:  r.Int64N(5000),
			OutputTokens: r.Int64N(2000),
			Failovers:    r.IntN(3),
		}
		u.UpstreamLatencyMS = u.LatencyMS / 3
		if r.IntN(3) == 0 {
			u.AIKeyID, u.ProjectID = fmt.Sprint("ai-", r.IntN(3)), fmt.Sprint("proj-", r.IntN(2))
		} else {
			u.APIKeyID, u.UserID = fmt.Sprint("key-", r.IntN(4)), fmt.Sprint("user-", r.IntN(3))
		}
		rows = append(rows, u)
	}
	for _, e := range envs {
		batch := make([]keybridge.Usage, len(rows))
		copy(batch, rows)
		for i := range batch {
			batch[i].OrgID = e.Org.ID
		}
		if err := e.Store.InsertUsage(context.Background(), batch); err != nil {
			t.Fatalf("InsertUsage = %v", err)
		}
	}
	windows := [][2]string{
		{day.Format(time.RFC3339), day.AddDate(0, 0, 3).Format(time.RFC3339)},
		{day.Add(90 * time.Minute).Format(time.RFC3339Nano), day.Add(53*time.Hour + 17*time.Minute + 123*time.Microsecond).Format(time.RFC3339Nano)},
		{day.Add(7 * time.Hour).In(time.FixedZone("", 2*3600)).Format(time.RFC3339), day.Add(30 * time.Hour).Format(time.RFC3339)},
	}
	for _, w := range windows {
		for _, by := range []string{"provider", "model", "user", "project", "api_key"} {
			for _, bucket := range []string{"", "hour", "day"} {
				q := url.Values{"group_by": {by}, "since": {w[0]}, "until": {w[1]}}
				if bucket != "" {
					q.Set("bucket", bucket)
				}
				var first string
				for i, e := range envs {
					resp, body := e.do("GET", auPath(e.Org, "/usage?"+q.Encode()), e.OwnerKey, nil)
					wantStatus(t, resp, body, http.StatusOK)
					if i == 0 {
						first = string(body)
					} else if string(body) != first {
						t.Errorf("usage?%s:\n%s: %s\n%s: %s", q.Encode(), engines[0].Name, first, engines[i].Name, body)
					}
				}
			}
		}
	}
}

// TestUsageTimeParams: since and until take RFC 3339 as its section 5.6
// writes it, lower-case t and z included, any offset, and answer in UTC;
// anything else is 400 naming the field, and a + sent unescaped (a space
// once decoded) is told how to send it.
func TestUsageTimeParams(t *testing.T) {
	e := newEnv(t, storetest.SQLite(t))
	day := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, -2)
	d := day.Format("2006-01-02")
	for _, c := range []struct {
		query     string
		wantSince time.Time // zero: 400
		field     string
		hint      string
	}{
		{"since=" + d + "T00:00:00Z", day, "", ""},
		{"since=" + d + "t00:00:00z", day, "", ""},
		{"since=" + d + "T02:00:00%2B02:00", day, "", ""},
		{"since=" + d + "T00:00:00.5-00:00", day.Add(500 * time.Millisecond), "", ""},
		{"since=" + d + "T02:00:00+02:00", time.Time{}, "since", "%2B"},
		{"until=" + d, time.Time{}, "until", ""},
		{"since=" + d + "T00:00:00", time.Time{}, "since", ""},
		{"since=" + d + "T00:00:00Z&until=" + d + "T00:00:00Z", time.Time{}, "until", ""},
	} {
		resp, body := e.do("GET", auPath(e.Org, "/usage?"+c.query), e.OwnerKey, nil)
		if c.wantSince.IsZero() {
			got := wantError(t, resp, body, keybridge.EInvalid)
			if msg := got.Error.Fields[c.field]; msg == "" || !strings.Contains(msg, c.hint) {
				t.Errorf("usage?%s: fields %v, want one for %s saying %q", c.query, got.Error.Fields, c.field, c.hint)
			}
			continue
		}
		wantStatus(t, resp, body, http.StatusOK)
		if got := decodeAs[auUsage](t, body); !got.Since.Equal(c.wantSince) || !strings.Contains(string(body), `"since":"`+c.wantSince.Format(time.RFC3339Nano)+`"`) {
			t.Errorf("usage?%s: %s, want since %s in UTC", c.query, body, c.wantSince.Format(time.RFC3339Nano))
		}
	}
}
