package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TestKeyLimitsBadInput checks that every malformed limit or model
// allowlist, on create and on PATCH of either kind of key, is a 400 in
// SPEC §1's shape that names the field, and changes nothing; and that
// the largest valid limits and a list of 64 models are kept as sent, in
// every engine.
func TestKeyLimitsBadInput(t *testing.T) {
	forEachEngine(t, testKeyLimitsBadInput)
}

func testKeyLimitsBadInput(t *testing.T, e *env) {
	many := make([]string, keybridge.MaxAllowedModels+1)
	for i := range many {
		many[i] = fmt.Sprintf("m%d", i)
	}
	cases := []struct {
		name, field string
		value       string // the field's JSON value
	}{
		{"rpm a string", "rate_limit_rpm", `"5"`},
		{"rpm a fraction", "rate_limit_rpm", `1.5`},
		{"rpm in exponent form", "rate_limit_rpm", `1e3`},
		{"rpm a boolean", "rate_limit_rpm", `true`},
		{"rpm an array", "rate_limit_rpm", `[5]`},
		{"rpm an object", "rate_limit_rpm", `{}`},
		{"rpm negative", "rate_limit_rpm", `-1`},
		{"rpm past int64", "rate_limit_rpm", `9223372036854775808`},
		{"tpm a string", "rate_limit_tpm", `"100"`},
		{"tpm negative", "rate_limit_tpm", `-100`},
		{"tpm the most negative int64", "rate_limit_tpm", `-9223372036854775808`},
		{"budget a string", "token_budget", `"1000"`},
		{"budget negative", "token_budget", `-5`},
		{"budget a fraction", "token_budget", `0.5`},
		{"period unknown", "budget_period", `"week"`},
		{"period in capitals", "budget_period", `"DAY"`},
		{"period a number", "budget_period", `1`},
		{"period an array", "budget_period", `["day"]`},
		{"models a string", "allowed_models", `"gpt-4o"`},
		{"models an object", "allowed_models", `{"gpt-4o":true}`},
		{"models over 64", "allowed_models", `["` + strings.Join(many, `","`) + `"]`},
		{"an empty pattern", "allowed_models", `["gpt-4o",""]`},
		{"a null entry", "allowed_models", `[null]`},
		{"a star not at the end", "allowed_models", `["gpt-*-mini"]`},
		{"a leading star", "allowed_models", `["*-mini"]`},
		{"two stars", "allowed_models", `["gpt**"]`},
		{"only stars", "allowed_models", `["**"]`},
		{"a duplicate", "allowed_models", `["gpt-4o","gpt-4o"]`},
		{"spaces", "allowed_models", `[" gpt-4o"]`},
		{"a control character", "allowed_models", `["gpt\t4o"]`},
		{"overlong", "allowed_models", `["` + strings.Repeat("a", 201) + `"]`},
	}
	for _, kind := range e.keyKinds() {
		path := kind.create(e, map[string]any{"rate_limit_rpm": 7})
		before := string(kind.read(path))
		for _, tc := range cases {
			create := kind.body(map[string]any{tc.field: json.RawMessage(tc.value)})
			resp, body := e.do("POST", kind.createPath, e.OwnerKey, create)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s, create, %s: %d %s, want 400", kind.name, tc.name, resp.StatusCode, body)
			} else {
				wantInvalidField(t, resp, body, tc.field)
			}
			resp, body = e.do("PATCH", path, e.OwnerKey, `{"`+tc.field+`":`+tc.value+`}`)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s, PATCH, %s: %d %s, want 400", kind.name, tc.name, resp.StatusCode, body)
			} else {
				wantInvalidField(t, resp, body, tc.field)
			}
		}
		if after := string(kind.read(path)); after != before {
			t.Errorf("%s after refused PATCHes:\n%s\nwant it unchanged:\n%s", kind.name, after, before)
		}

		// The extremes that are valid are kept as sent.
		most := `{"rate_limit_rpm":9223372036854775807,"rate_limit_tpm":9223372036854775807,` +
			`"token_budget":9223372036854775807,"budget_period":"month","allowed_models":["` + strings.Join(many[1:], `","`) + `"]}`
		resp, body := e.do("PATCH", path, e.OwnerKey, most)
		wantStatus(t, resp, body, http.StatusOK)
		var got struct {
			RPM    json.Number `json:"rate_limit_rpm"`
			TPM    json.Number `json:"rate_limit_tpm"`
			Budget json.Number `json:"token_budget"`
			Models []string    `json:"allowed_models"`
		}
		dec := json.NewDecoder(bytes.NewReader(kind.read(path)))
		dec.UseNumber()
		if err := dec.Decode(&got); err != nil {
			t.Fatal(err)
		}
		const top = "9223372036854775807"
		if got.RPM != top || got.TPM != top || got.Budget != top || len(got.Models) != keybridge.MaxAllowedModels {
			t.Errorf("%s with the largest limits and %d models = %+v", kind.name, keybridge.MaxAllowedModels, got)
		}
	}
}
