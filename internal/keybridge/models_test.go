package keybridge_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

func TestModelAllowlistValidate(t *testing.T) {
	many := make(keybridge.ModelAllowlist, 65)
	for i := range many {
		many[i] = "m" + strings.Repeat("x", i)
	}
	for _, tc := range []struct {
		name string
		l    keybridge.ModelAllowlist
		ok   bool
	}{
		{"empty", nil, true},
		{"names and patterns", keybridge.ModelAllowlist{"gpt-4o", "claude-*", "*", "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova*"}, true},
		{"64 entries", many[:64], true},
		{"65 entries", many, false},
		{"empty entry", keybridge.ModelAllowlist{"gpt-4o", ""}, false},
		{"201 characters", keybridge.ModelAllowlist{strings.Repeat("a", 201)}, false},
		{"200 characters", keybridge.ModelAllowlist{strings.Repeat("a", 200)}, true},
		{"not ASCII", keybridge.ModelAllowlist{"gpt-4ö"}, false},
		{"control character", keybridge.ModelAllowlist{"gpt\n4o"}, false},
		{"trailing space", keybridge.ModelAllowlist{"gpt-4o "}, false},
		{"star inside", keybridge.ModelAllowlist{"gpt-*-mini"}, false},
		{"two stars", keybridge.ModelAllowlist{"gpt**"}, false},
		{"leading star", keybridge.ModelAllowlist{"*mini"}, false},
		{"duplicate", keybridge.ModelAllowlist{"gpt-4o", "gpt-4o"}, false},
	} {
		v := keybridge.Validation{}
		tc.l.Validate(v, "allowed_models")
		err := v.Err()
		if got := err == nil; got != tc.ok {
			t.Errorf("%s: Validate(%q) = %v, want ok=%v", tc.name, tc.l, err, tc.ok)
		}
		if err != nil && !keybridge.IsCode(err, keybridge.EInvalid) {
			t.Errorf("%s: Validate = %v, want invalid_argument", tc.name, err)
		}
	}
}

func TestModelMatcherAllows(t *testing.T) {
	m := keybridge.ModelAllowlist{"gpt-4o-mini", "claude-*", "gemini-2.5-pro"}.Matcher()
	for model, want := range map[string]bool{
		"gpt-4o-mini":                true,
		"gpt-4o":                     false,
		"gpt-4o-mini-2024":           false,
		"claude-":                    true,
		"claude-sonnet-4-5":          true,
		"claud":                      false,
		"gemini-2.5-pro":             true,
		"gemini-2.5-pro\ngpt-4o":     false,
		"":                           false,
		"anthropic.claude-3-5-haiku": false,
	} {
		if got := m.Allows(model); got != want {
			t.Errorf("Allows(%q) = %v, want %v", model, got, want)
		}
	}
	var zero keybridge.ModelMatcher
	if zero.Restricted() || !zero.Allows("anything") || !keybridge.ModelAllowlist(nil).Matcher().Allows("") {
		t.Errorf("an empty allowlist restricts: want every model allowed")
	}
	if !m.Restricted() {
		t.Errorf("Restricted() = false for a list of three")
	}
	if allocs := testing.AllocsPerRun(100, func() { m.Allows("claude-sonnet-4-5"); m.Allows("nope") }); allocs != 0 {
		t.Errorf("Allows allocates %v times, want 0", allocs)
	}
}

func TestModelAllowlistJSON(t *testing.T) {
	for _, tc := range []struct {
		l    keybridge.ModelAllowlist
		want string
	}{
		{nil, `[]`},
		{keybridge.ModelAllowlist{}, `[]`},
		{keybridge.ModelAllowlist{"a*", `b"c`}, `["a*","b\"c"]`},
	} {
		b, err := json.Marshal(struct {
			L keybridge.ModelAllowlist `json:"l"`
		}{tc.l})
		if got, want := string(b), `{"l":`+tc.want+`}`; err != nil || got != want {
			t.Errorf("Marshal(%q) = %s, %v; want %s", tc.l, got, err, want)
		}
	}
}
