package upstream_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/upstream"
)

func TestParseRateLimits(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name    string
		headers map[string]string
		want    string // JSON of the parsed limits
	}{
		{
			// The example of OpenAI's rate-limit documentation.
			name: "openai",
			headers: map[string]string{
				"x-ratelimit-limit-requests":     "60",
				"x-ratelimit-limit-tokens":       "150000",
				"x-ratelimit-remaining-requests": "59",
				"x-ratelimit-remaining-tokens":   "149984",
				"x-ratelimit-reset-requests":     "1s",
				"x-ratelimit-reset-tokens":       "6m0s",
			},
			want: `{"requests":{"limit":60,"remaining":59,"reset_at":"2026-03-01T12:00:01Z"},` +
				`"tokens":{"limit":150000,"remaining":149984,"reset_at":"2026-03-01T12:06:00Z"}}`,
		},
		{
			name: "openai milliseconds and fractions",
			headers: map[string]string{
				"x-ratelimit-reset-requests": "12ms",
				"x-ratelimit-reset-tokens":   "7.66s",
			},
			want: `{"requests":{"limit":null,"remaining":null,"reset_at":"2026-03-01T12:00:00.012Z"},` +
				`"tokens":{"limit":null,"remaining":null,"reset_at":"2026-03-01T12:00:07.66Z"}}`,
		},
		{
			name: "days and bare seconds",
			headers: map[string]string{
				"x-ratelimit-reset-requests": "1d2h",
				"x-ratelimit-reset-tokens":   "20",
			},
			want: `{"requests":{"limit":null,"remaining":null,"reset_at":"2026-03-02T14:00:00Z"},` +
				`"tokens":{"limit":null,"remaining":null,"reset_at":"2026-03-01T12:00:20Z"}}`,
		},
		{
			// The headers of Anthropic's rate-limit documentation.
			name: "anthropic",
			headers: map[string]string{
				"anthropic-ratelimit-requests-limit":          "50",
				"anthropic-ratelimit-requests-remaining":      "49",
				"anthropic-ratelimit-requests-reset":          "2026-03-01T12:00:01Z",
				"anthropic-ratelimit-tokens-limit":            "120000",
				"anthropic-ratelimit-tokens-remaining":        "119000",
				"anthropic-ratelimit-tokens-reset":            "2026-03-01T12:00:30Z",
				"anthropic-ratelimit-input-tokens-limit":      "100000",
				"anthropic-ratelimit-input-tokens-remaining":  "99500",
				"anthropic-ratelimit-input-tokens-reset":      "2026-03-01T12:00:30.5+00:00",
				"anthropic-ratelimit-output-tokens-limit":     "20000",
				"anthropic-ratelimit-output-tokens-remaining": "19500",
				"anthropic-ratelimit-output-tokens-reset":     "2026-03-01T13:00:02+01:00",
			},
			want: `{"requests":{"limit":50,"remaining":49,"reset_at":"2026-03-01T12:00:01Z"},` +
				`"tokens":{"limit":120000,"remaining":119000,"reset_at":"2026-03-01T12:00:30Z"},` +
				`"input_tokens":{"limit":100000,"remaining":99500,"reset_at":"2026-03-01T12:00:30.5Z"},` +
				`"output_tokens":{"limit":20000,"remaining":19500,"reset_at":"2026-03-01T12:00:02Z"}}`,
		},
		{
			name: "garbage is left out",
			headers: map[string]string{
				"x-ratelimit-limit-requests":             "lots",
				"x-ratelimit-remaining-requests":         "-1",
				"x-ratelimit-reset-requests":             "soon",
				"anthropic-ratelimit-tokens-reset":       "tomorrow",
				"anthropic-ratelimit-requests-remaining": "1e400",
			},
			want: `{}`,
		},
		{
			name:    "float counts",
			headers: map[string]string{"x-ratelimit-remaining-tokens": "1000.0"},
			want:    `{"tokens":{"limit":null,"remaining":1000,"reset_at":null}}`,
		},
		{name: "none", headers: nil, want: `{}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range c.headers {
				h.Set(k, v)
			}
			got, err := json.Marshal(upstream.ParseRateLimits(h, now))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("ParseRateLimits =\n%s\nwant\n%s", got, c.want)
			}
		})
	}
}
