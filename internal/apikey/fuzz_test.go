package apikey_test

import (
	"testing"

	"github.com/keybridge/keybridge/internal/apikey"
)

// FuzzValid checks that no input panics and that only well-formed tokens pass.
// Run with: go test -fuzz=FuzzValid ./internal/apikey
func FuzzValid(f *testing.F) {
	tok, _ := apikey.Generate(apikey.PlatformPrefix)
	f.Add(tok)
	f.Add("kb_")
	f.Fuzz(func(t *testing.T, s string) {
		if apikey.Valid(s, apikey.PlatformPrefix) && len(s) != len(tok) {
			t.Fatalf("Valid(%q) = true for a token of the wrong length", s)
		}
	})
}
