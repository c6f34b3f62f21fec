package apikey_test

import (
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/apikey"
)

func TestGenerateValid(t *testing.T) {
	seen := map[string]bool{}
	for _, prefix := range []string{apikey.PlatformPrefix, apikey.AIKeyPrefix, apikey.AISecretPrefix} {
		for range 200 {
			tok, err := apikey.Generate(prefix)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(tok, prefix) || len(tok) != len(prefix)+49 {
				t.Fatalf("Generate(%q) = %q, want prefix and length %d", prefix, tok, len(prefix)+49)
			}
			if !apikey.Valid(tok, prefix) {
				t.Fatalf("Valid(%q) = false, want true", tok)
			}
			if seen[tok] {
				t.Fatalf("Generate returned %q twice", tok)
			}
			seen[tok] = true
		}
	}
}

func TestValidRejects(t *testing.T) {
	tok, _ := apikey.Generate(apikey.PlatformPrefix)
	flip := func(i int) string {
		b := []byte(tok)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	tests := map[string]string{
		"empty":             "",
		"prefix only":       "kb_",
		"wrong prefix":      "kx_" + tok[3:],
		"other prefix":      strings.Replace(tok, "kb_", "kbs_", 1),
		"short":             tok[:len(tok)-1],
		"long":              tok + "a",
		"body flipped":      flip(10),
		"checksum flipped":  flip(len(tok) - 1),
		"bad alphabet":      tok[:10] + "-" + tok[11:],
		"checksum overflow": tok[:len(tok)-6] + "zzzzzz",
	}
	for name, in := range tests {
		if apikey.Valid(in, apikey.PlatformPrefix) {
			t.Errorf("%s: Valid(%q) = true, want false", name, in)
		}
	}
}

func TestDisplayAndHash(t *testing.T) {
	tok, _ := apikey.Generate(apikey.PlatformPrefix)
	if got := apikey.Display(tok); got != tok[:12] {
		t.Errorf("Display = %q, want %q", got, tok[:12])
	}
	if apikey.Hash(tok) == apikey.Hash(tok+"x") {
		t.Error("Hash collides for different tokens")
	}
}

func BenchmarkValid(b *testing.B) {
	tok, _ := apikey.Generate(apikey.PlatformPrefix)
	b.ReportAllocs()
	for b.Loop() {
		if !apikey.Valid(tok, apikey.PlatformPrefix) {
			b.Fatal("invalid")
		}
	}
}
