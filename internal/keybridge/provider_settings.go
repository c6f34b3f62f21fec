package keybridge

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// ProviderSettings is a provider's type-specific settings object (SPEC §4).
// It is stored whole, sealed by the key ring; AccessKey and
// AccessKeySecret are write-only and never leave the server.
type ProviderSettings struct {
	// Bedrock.
	Region          string
	Model           string
	SmallFastModel  string
	AccessKey       Secret
	AccessKeySecret Secret
	// Azure OpenAI.
	APIVersion string
}

// SettingsPatch is a settings object as a request sends it: a nil field
// was not sent. The management API decodes it strictly (exact names, each
// once); its errors name "settings.<field>". An empty secret counts as not
// sent, so that rotating one secret never needs the others.
type SettingsPatch struct {
	Region          *string `json:"region"`
	Model           *string `json:"model"`
	SmallFastModel  *string `json:"small_fast_model"`
	AccessKey       *Secret `json:"access_key"`
	AccessKeySecret *Secret `json:"access_key_secret"`
	APIVersion      *string `json:"api_version"`
}

// DefaultAzureAPIVersion is the api-version used for an Azure OpenAI
// provider whose settings do not name one: the newest GA data-plane version
// when this was written.
const DefaultAzureAPIVersion = "2024-10-21"

var (
	regionPattern     = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$`)
	apiVersionPattern = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$|^(v1|latest|preview)$`)
)

// Empty reports whether the patch sends nothing.
func (p SettingsPatch) Empty() bool { return p == SettingsPatch{} }

// Apply returns s with the patch's fields written over it. Secrets sent
// empty keep the stored value.
func (s ProviderSettings) Apply(p SettingsPatch) ProviderSettings {
	set := func(dst *string, v *string) {
		if v != nil {
			*dst = strings.TrimSpace(*v)
		}
	}
	set(&s.Region, p.Region)
	set(&s.Model, p.Model)
	set(&s.SmallFastModel, p.SmallFastModel)
	set(&s.APIVersion, p.APIVersion)
	if p.AccessKey != nil && strings.TrimSpace(p.AccessKey.Reveal()) != "" {
		s.AccessKey = NewSecret(strings.TrimSpace(p.AccessKey.Reveal()))
	}
	if p.AccessKeySecret != nil && strings.TrimSpace(p.AccessKeySecret.Reveal()) != "" {
		s.AccessKeySecret = NewSecret(strings.TrimSpace(p.AccessKeySecret.Reveal()))
	}
	return s
}

// settingsFields lists, per provider type, the settings it accepts.
var settingsFields = map[ProviderType][]string{
	ProviderBedrock:     {"region", "model", "small_fast_model", "access_key", "access_key_secret"},
	ProviderAzureOpenAI: {"api_version"},
}

// SecretSettings are the write-only settings: responses show only
// "<field>_set".
var SecretSettings = []string{"access_key", "access_key_secret"}

// Validate checks s for a provider of type t, after defaults: Bedrock needs
// a region and both halves of an access key or neither; Azure's
// api_version must look like one; other types take no settings. It
// returns invalid_argument errors on "settings.<field>".
func (s *ProviderSettings) Validate(t ProviderType) error {
	v := Validation{}
	allowed := settingsFields[t]
	for field, set := range s.fieldsSet() {
		if set && !slices.Contains(allowed, field) {
			v.Add("settings."+field, fmt.Sprintf("is not a setting of %s providers", t))
		}
	}
	for field, sec := range map[string]Secret{"settings.access_key": s.AccessKey, "settings.access_key_secret": s.AccessKeySecret} {
		if problem := SecretProblem(sec.Reveal()); problem != "" {
			v.Add(field, problem)
		}
	}
	switch t {
	case ProviderBedrock:
		switch {
		case s.Region == "":
			v.Add("settings.region", "is required for bedrock providers")
		case !regionPattern.MatchString(s.Region):
			v.Add("settings.region", "must be an AWS region such as us-east-1")
		}
		if s.AccessKey.IsZero() != s.AccessKeySecret.IsZero() {
			field := "settings.access_key"
			if s.AccessKeySecret.IsZero() {
				field = "settings.access_key_secret"
			}
			v.Add(field, "access_key and access_key_secret go together")
		}
		for f, val := range map[string]string{"settings.model": s.Model, "settings.small_fast_model": s.SmallFastModel} {
			switch {
			case len(val) > 200:
				v.Add(f, "must be at most 200 characters")
			case !visibleASCII(val):
				// Bedrock model IDs, inference profiles and ARNs are
				// printable ASCII; anything else would not survive the
				// sealed JSON (invalid UTF-8 becomes U+FFFD) or a URL path.
				v.Add(f, "must be a Bedrock model ID or ARN: printable ASCII without spaces")
			}
		}
	case ProviderAzureOpenAI:
		if s.APIVersion != "" && !apiVersionPattern.MatchString(s.APIVersion) {
			v.Add("settings.api_version", "must be an Azure OpenAI api-version such as 2024-10-21")
		}
	}
	return v.Err()
}

// visibleASCII reports whether s is empty or printable ASCII without
// spaces.
func visibleASCII(s string) bool {
	for i := range len(s) {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Defaults fills what a type's settings default to.
func (s *ProviderSettings) Defaults(t ProviderType) {
	if t == ProviderAzureOpenAI && s.APIVersion == "" {
		s.APIVersion = DefaultAzureAPIVersion
	}
}

func (s *ProviderSettings) fieldsSet() map[string]bool {
	return map[string]bool{
		"region":            s.Region != "",
		"model":             s.Model != "",
		"small_fast_model":  s.SmallFastModel != "",
		"access_key":        !s.AccessKey.IsZero(),
		"access_key_secret": !s.AccessKeySecret.IsZero(),
		"api_version":       s.APIVersion != "",
	}
}

// Public returns the settings a response may show for a provider of type
// t: the non-secret fields, and "<field>_set" for each secret one.
func (s *ProviderSettings) Public(t ProviderType) map[string]any {
	out := map[string]any{}
	switch t {
	case ProviderBedrock:
		out["region"] = s.Region
		out["model"] = s.Model
		out["small_fast_model"] = s.SmallFastModel
		out["access_key_set"] = !s.AccessKey.IsZero()
		out["access_key_secret_set"] = !s.AccessKeySecret.IsZero()
	case ProviderAzureOpenAI:
		out["api_version"] = s.APIVersion
	}
	return out
}

// Diff returns the audit changes from s to n under "settings.<field>",
// with secrets as Redacted on both sides.
func (s *ProviderSettings) Diff(n *ProviderSettings) map[string]Change {
	out := map[string]Change{}
	str := func(field, a, b string) {
		if a != b {
			out["settings."+field] = Change{Old: a, New: b}
		}
	}
	sec := func(field string, a, b Secret) {
		if a.Reveal() != b.Reveal() {
			out["settings."+field] = Change{Old: redactedOrEmpty(a), New: redactedOrEmpty(b)}
		}
	}
	str("region", s.Region, n.Region)
	str("model", s.Model, n.Model)
	str("small_fast_model", s.SmallFastModel, n.SmallFastModel)
	str("api_version", s.APIVersion, n.APIVersion)
	sec("access_key", s.AccessKey, n.AccessKey)
	sec("access_key_secret", s.AccessKeySecret, n.AccessKeySecret)
	return out
}

func redactedOrEmpty(s Secret) any {
	if s.IsZero() {
		return nil
	}
	return Redacted
}

// sealedSettings is the plaintext form that the key ring seals. It exists
// only between MarshalSealed/UnmarshalSealed and the ring.
type sealedSettings struct {
	Region          string `json:"region,omitempty"`
	Model           string `json:"model,omitempty"`
	SmallFastModel  string `json:"small_fast_model,omitempty"`
	AccessKey       string `json:"access_key,omitempty"`
	AccessKeySecret string `json:"access_key_secret,omitempty"`
	APIVersion      string `json:"api_version,omitempty"`
}

// MarshalSealed returns the plaintext JSON of s, secrets included, for the
// key ring to seal. Nothing else may see it.
func (s *ProviderSettings) MarshalSealed() []byte {
	b, err := json.Marshal(sealedSettings{s.Region, s.Model, s.SmallFastModel, s.AccessKey.Reveal(), s.AccessKeySecret.Reveal(), s.APIVersion})
	if err != nil {
		// A struct of strings always encodes.
		panic("encode settings: " + err.Error())
	}
	return b
}

// UnmarshalSealed reads what MarshalSealed wrote, once the ring opened it.
func (s *ProviderSettings) UnmarshalSealed(b []byte) error {
	var v sealedSettings
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("decode settings: %w", err)
	}
	*s = ProviderSettings{v.Region, v.Model, v.SmallFastModel, NewSecret(v.AccessKey), NewSecret(v.AccessKeySecret), v.APIVersion}
	return nil
}

// DefaultBaseURL returns the base URL of a provider of type t that names
// none (SPEC §4), or "" for the types that must name one (azure-openai,
// openai-compatible). Bedrock's depends on the region.
func DefaultBaseURL(t ProviderType, region string) string {
	switch t {
	case ProviderOpenAI:
		return "https://api.openai.com/v1"
	case ProviderAnthropic:
		return "https://api.anthropic.com"
	case ProviderGoogle:
		return "https://generativelanguage.googleapis.com"
	case ProviderBedrock:
		if region == "" {
			return ""
		}
		return "https://bedrock-runtime." + region + ".amazonaws.com"
	}
	return ""
}
