package keybridge_test

import (
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

func TestOrgValidate(t *testing.T) {
	tests := []struct {
		slug, name string
		wantField  string // "" for valid
	}{
		{"acme", "Acme", ""},
		{"acme-eu-2", "Acme EU", ""},
		{"01a2085d-9e53-7429", "Acme", ""},
		{"Acme", "Acme", "slug"},
		{"acme-", "Acme", "slug"},
		{"-acme", "Acme", "slug"},
		{"ac--me", "Acme", "slug"},
		{"", "Acme", "slug"},
		{"01a2085d-9e53-7429-ad2c-83aeab50cabe", "Acme", "slug"},
		{"acme", " ", "name"},
	}
	for _, tc := range tests {
		err := (&keybridge.Org{Slug: tc.slug, Name: tc.name}).Validate()
		if tc.wantField == "" {
			if err != nil {
				t.Errorf("Org{%q, %q}.Validate() = %v, want nil", tc.slug, tc.name, err)
			}
			continue
		}
		e, ok := err.(*keybridge.Error)
		if !ok || e.Code != keybridge.EInvalid || e.Fields[tc.wantField] == "" {
			t.Errorf("Org{%q, %q}.Validate() = %v, want invalid_argument on %s", tc.slug, tc.name, err, tc.wantField)
		}
	}
}

func TestValidateProviderName(t *testing.T) {
	for name, valid := range map[string]bool{
		"openai":                               true,
		"openai-eu":                            true,
		"gateway":                              false, // reserved
		"OpenAI":                               false,
		"01a2085d-9e53-7429-ad2c-83aeab50cabe": false, // an ID's shape
	} {
		if err := keybridge.ValidateProviderName(name); (err == nil) != valid {
			t.Errorf("ValidateProviderName(%q) = %v, want valid=%v", name, err, valid)
		}
	}
}
