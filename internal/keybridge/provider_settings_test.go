package keybridge_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

func TestSecretUnmarshalJSON(t *testing.T) {
	var v struct {
		Key keybridge.Secret `json:"key"`
	}
	if err := json.Unmarshal([]byte(`{"key":"sk-123"}`), &v); err != nil || v.Key.Reveal() != "sk-123" {
		t.Fatalf("Unmarshal = %v, %q; want sk-123", err, v.Key.Reveal())
	}
	out, _ := json.Marshal(v)
	if string(out) != `{"key":"[redacted]"}` || fmt.Sprint(v) != "{[redacted]}" {
		t.Errorf("a decoded secret prints as %s / %v", out, v)
	}
	for _, in := range []string{`{"key":1}`, `{"key":{}}`, `{"key":["x"]}`} {
		err := json.Unmarshal([]byte(in), &v)
		if !keybridge.IsCode(err, keybridge.EInvalid) {
			t.Errorf("Unmarshal(%s) = %v, want invalid_argument", in, err)
		}
	}
	v.Key = keybridge.NewSecret("kept")
	if err := json.Unmarshal([]byte(`{"key":null}`), &v); err != nil || v.Key.Reveal() != "kept" {
		t.Errorf("Unmarshal(null) = %v, %q; want the value untouched", err, v.Key.Reveal())
	}
}

func TestProviderSettings(t *testing.T) {
	for _, c := range []struct {
		typ   keybridge.ProviderType
		json  string
		field string // the invalid field, "" when valid
	}{
		{keybridge.ProviderBedrock, `{"region":"us-east-1"}`, ""},
		{keybridge.ProviderBedrock, `{"region":"us-gov-west-1","access_key":"AKIA","access_key_secret":"s"}`, ""},
		{keybridge.ProviderBedrock, `{}`, "settings.region"},
		{keybridge.ProviderBedrock, `{"region":"US-EAST-1"}`, "settings.region"},
		{keybridge.ProviderBedrock, `{"region":"us-east-1","access_key":"AKIA"}`, "settings.access_key_secret"},
		{keybridge.ProviderBedrock, `{"region":"us-east-1","access_key_secret":"s"}`, "settings.access_key"},
		{keybridge.ProviderBedrock, `{"region":"us-east-1","api_version":"2024-10-21"}`, "settings.api_version"},
		{keybridge.ProviderAzureOpenAI, `{}`, ""},
		{keybridge.ProviderAzureOpenAI, `{"api_version":"2025-04-01-preview"}`, ""},
		{keybridge.ProviderAzureOpenAI, `{"api_version":"v1"}`, ""},
		{keybridge.ProviderAzureOpenAI, `{"api_version":"yesterday"}`, "settings.api_version"},
		{keybridge.ProviderOpenAI, `{}`, ""},
		{keybridge.ProviderOpenAI, `null`, ""},
		{keybridge.ProviderOpenAI, `{"model":"gpt-4o"}`, "settings.model"},
	} {
		// Decoding a request's settings strictly is the management API's
		// (internal/httpapi, decode.go); here only the domain rules.
		var patch keybridge.SettingsPatch
		err := json.Unmarshal([]byte(c.json), &patch)
		if err == nil {
			s := keybridge.ProviderSettings{}.Apply(patch)
			s.Defaults(c.typ)
			err = s.Validate(c.typ)
		}
		var e *keybridge.Error
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%s %s: %v, want valid", c.typ, c.json, err)
		case c.field != "" && (!errorAs(err, &e) || e.Fields[c.field] == ""):
			t.Errorf("%s %s: %v, want an error on %s", c.typ, c.json, err, c.field)
		}
	}
}

func errorAs(err error, e **keybridge.Error) bool {
	k, ok := err.(*keybridge.Error)
	*e = k
	return ok
}

// TestProviderSettingsPatch: fields not sent stay, secrets sent empty stay,
// and the public view and the audit diff never hold a secret.
func TestProviderSettingsPatch(t *testing.T) {
	stored := keybridge.ProviderSettings{Region: "us-east-1", AccessKey: keybridge.NewSecret("AKIAOLD"), AccessKeySecret: keybridge.NewSecret("old-secret")}
	var patch keybridge.SettingsPatch
	if err := json.Unmarshal([]byte(`{"access_key":"","access_key_secret":"new-secret","model":"m"}`), &patch); err != nil {
		t.Fatal(err)
	}
	got := stored.Apply(patch)
	if got.Region != "us-east-1" || got.AccessKey.Reveal() != "AKIAOLD" || got.AccessKeySecret.Reveal() != "new-secret" || got.Model != "m" {
		t.Errorf("Apply = region %s, key %s, secret %s, model %s", got.Region, got.AccessKey.Reveal(), got.AccessKeySecret.Reveal(), got.Model)
	}
	pub, _ := json.Marshal(got.Public(keybridge.ProviderBedrock))
	if want := `{"access_key_secret_set":true,"access_key_set":true,"model":"m","region":"us-east-1","small_fast_model":""}`; string(pub) != want {
		t.Errorf("Public = %s, want %s", pub, want)
	}
	diff, _ := json.Marshal(stored.Diff(&got))
	if want := `{"settings.access_key_secret":{"old":"[redacted]","new":"[redacted]"},"settings.model":{"old":"","new":"m"}}`; string(diff) != want {
		t.Errorf("Diff = %s, want %s", diff, want)
	}
	var back keybridge.ProviderSettings
	if err := back.UnmarshalSealed(got.MarshalSealed()); err != nil || back.AccessKeySecret.Reveal() != "new-secret" || back.Region != "us-east-1" {
		t.Errorf("MarshalSealed/UnmarshalSealed round trip = %v, %+v", err, back)
	}
	if strings.Contains(fmt.Sprintf("%v %+v %#v", got, got, got), "secret") {
		t.Errorf("formatting settings shows a secret: %+v", got)
	}
}

func TestDefaultBaseURL(t *testing.T) {
	for _, c := range []struct {
		typ    keybridge.ProviderType
		region string
		want   string
	}{
		{keybridge.ProviderOpenAI, "", "https://api.openai.com/v1"},
		{keybridge.ProviderAnthropic, "", "https://api.anthropic.com"},
		{keybridge.ProviderGoogle, "", "https://generativelanguage.googleapis.com"},
		{keybridge.ProviderBedrock, "eu-west-3", "https://bedrock-runtime.eu-west-3.amazonaws.com"},
		{keybridge.ProviderBedrock, "", ""},
		{keybridge.ProviderAzureOpenAI, "", ""},
		{keybridge.ProviderOpenAICompatible, "", ""},
	} {
		if got := keybridge.DefaultBaseURL(c.typ, c.region); got != c.want {
			t.Errorf("DefaultBaseURL(%s, %q) = %q, want %q", c.typ, c.region, got, c.want)
		}
	}
}
