package keybridge_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// FuzzProviderSettings runs arbitrary settings through what a provider's
// settings go through: Apply, Defaults, Validate, the sealed round trip,
// the public view, and the default base URL. Never a panic; every
// refusal an invalid_argument on settings.<field>; what is accepted seals
// and opens to itself; the public view never shows a secret; and an
// accepted Bedrock region makes an AWS host, nothing else. Run it with
// scripts/fuzz.sh (docs/testing.md).
func FuzzProviderSettings(f *testing.F) {
	f.Add(uint8(2), "us-east-1", "anthropic.claude", "", "", "AKIAEXAMPLEKEY", "secret-access-key")
	f.Add(uint8(4), "", "", "", "2024-10-21", "", "")
	f.Add(uint8(2), "us-east-1.evil.test/x", "", "", "", "", "")
	f.Add(uint8(0), "", "gpt-4o", "", "", "", "")
	f.Add(uint8(2), "us-east-1", "claude\xff", "", "", "", "")
	f.Fuzz(func(t *testing.T, typ uint8, region, model, small, apiVersion, accessKey, accessSecret string) {
		if !utf8.ValidString(accessKey) || !utf8.ValidString(accessSecret) {
			// A secret reaches the domain from a JSON body, which the
			// management API's decoder refuses unless it is UTF-8; what a
			// secret may hold is the API's printable-ASCII rule.
			return
		}
		pt := keybridge.ProviderTypes[int(typ)%len(keybridge.ProviderTypes)]
		p := keybridge.SettingsPatch{Region: &region, Model: &model, SmallFastModel: &small, APIVersion: &apiVersion}
		ak, as := keybridge.NewSecret(accessKey), keybridge.NewSecret(accessSecret)
		p.AccessKey, p.AccessKeySecret = &ak, &as
		s := keybridge.ProviderSettings{}.Apply(p)
		s.Defaults(pt)
		if err := s.Validate(pt); err != nil {
			var e *keybridge.Error
			if !errors.As(err, &e) || e.Code != keybridge.EInvalid || len(e.Fields) == 0 {
				t.Fatalf("Validate(%+v) = %v, want invalid_argument with fields", s, err)
			}
			for field := range e.Fields {
				if !strings.HasPrefix(field, "settings.") {
					t.Fatalf("Validate: field %q, want settings.<field>", field)
				}
			}
			return
		}
		var back keybridge.ProviderSettings
		if err := back.UnmarshalSealed(s.MarshalSealed()); err != nil {
			t.Fatalf("UnmarshalSealed(MarshalSealed(%+v)) = %v", s, err)
		}
		if back.Region != s.Region || back.Model != s.Model || back.SmallFastModel != s.SmallFastModel || back.APIVersion != s.APIVersion ||
			back.AccessKey.Reveal() != s.AccessKey.Reveal() || back.AccessKeySecret.Reveal() != s.AccessKeySecret.Reveal() {
			t.Fatalf("sealed round trip changed the settings")
		}
		pub, err := json.Marshal(s.Public(pt))
		if err != nil {
			t.Fatalf("Public: %v", err)
		}
		for _, secret := range []string{s.AccessKey.Reveal(), s.AccessKeySecret.Reveal()} {
			enc, _ := json.Marshal(secret)
			plain := strings.Trim(string(enc), `"`)
			if len(secret) >= 8 && strings.Contains(string(pub), plain) && !strings.Contains(s.Region+s.Model+s.SmallFastModel+s.APIVersion, secret) {
				t.Fatalf("Public = %s, shows a secret", pub)
			}
		}
		if base := keybridge.DefaultBaseURL(pt, s.Region); base != "" {
			if err := keybridge.ValidateBaseURL(base); err != nil {
				t.Fatalf("DefaultBaseURL(%s, %q) = %q, which ValidateBaseURL refuses: %v", pt, s.Region, base, err)
			}
			u, _ := url.Parse(base)
			if pt == keybridge.ProviderBedrock && (u.Host != "bedrock-runtime."+s.Region+".amazonaws.com" || u.Path != "") {
				t.Fatalf("region %q makes the base URL %q", s.Region, base)
			}
		}
	})
}

// FuzzValidateBaseURL checks that what ValidateBaseURL accepts is what the
// probe and the gateway can use: an absolute http(s) URL naming a host (not
// just a port, which would dial this machine), without user info, that
// makes a request.
func FuzzValidateBaseURL(f *testing.F) {
	for _, s := range []string{"https://api.openai.com/v1", "http://[::1]:8080", "https://user:pw@host", "javascript:alert(1)", "https://", "https://:443/v1", "//host/x", "https://h/%zz"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if keybridge.ValidateBaseURL(s) != nil {
			return
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil {
			t.Fatalf("ValidateBaseURL(%q) = nil for %+v, %v", s, u, err)
		}
		if _, err := http.NewRequest(http.MethodGet, s, nil); err != nil {
			t.Fatalf("ValidateBaseURL(%q) = nil, but it makes no request: %v", s, err)
		}
	})
}
