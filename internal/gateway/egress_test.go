package gateway_test

import (
	"encoding/json"
	"strings"
	"testing"
)

// The gateway dials through the egress guard: a provider whose base URL
// is a cloud metadata address is refused at dial time, and no key is tried.
func TestEgressGuardRefusesMetadataAddresses(t *testing.T) {
	e := newEnv(t)
	e.provider(map[string]any{"name": "meta", "type": "openai", "base_url": "http://169.254.169.254/v1"})
	e.addKey("meta", canary(t, "sk-"), 0)
	e.addKey("meta", canary(t, "sk-"), 1)
	resp, body := e.do(e.post("/gateway/meta/chat/completions", e.OwnerKey, `{}`))
	var v errorShape
	json.Unmarshal(body, &v)
	if resp.StatusCode != 502 || !strings.Contains(v.Error.Message, "egress refused") {
		t.Errorf("= %d %s, want 502 naming the egress refusal", resp.StatusCode, body)
	}
}
