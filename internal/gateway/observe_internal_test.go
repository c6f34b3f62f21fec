package gateway

import (
	"encoding/json"
	"testing"
)

func TestAppendJSONStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", `q"uote\back`, "new\nline\r\ttab", "\x00\x1f\x7f", "<a&b>",
		"ünïcödé ✓", "bad \xff utf8 \xc3", "line\u2028sep\u2029", "/v1/models/ft:gpt-4o%2Fx"} {
		want, _ := json.Marshal(s)
		if got := appendJSONString(nil, s); string(got) != string(want) {
			t.Errorf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	}
}
