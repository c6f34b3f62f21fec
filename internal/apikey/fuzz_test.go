package apikey_test

import (
	"testing"

	"github.com/keybridge/keybridge/internal/apikey"
)

var prefixes = []string{apikey.PlatformPrefix, apikey.AIKeyPrefix, apikey.AISecretPrefix}

// FuzzValid checks that no input panics and that only well-formed tokens
// pass, for every prefix. Run it with scripts/fuzz.sh (docs/testing.md).
func FuzzValid(f *testing.F) {
	for _, p := range prefixes {
		tok, _ := apikey.Generate(p)
		f.Add(tok)
		f.Add(p)
	}
	f.Add("kb_" + string(make([]byte, 49)))
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range prefixes {
			if !apikey.Valid(s, p) {
				continue
			}
			if len(s) != len(p)+49 || s[:len(p)] != p {
				t.Fatalf("Valid(%q, %q) = true for a token of the wrong length or prefix", s, p)
			}
			if apikey.Display(s) != s[:apikey.DisplayLen] {
				t.Fatalf("Display(%q) = %q", s, apikey.Display(s))
			}
		}
	})
}

// FuzzValidMutated changes one byte of a real token: the checksum (CRC-32C,
// which catches every error of up to 32 bits in a row) must refuse it.
func FuzzValidMutated(f *testing.F) {
	f.Add(uint8(0), uint8(3), byte('x'))
	f.Add(uint8(1), uint8(50), byte('0'))
	f.Add(uint8(2), uint8(20), byte(0))
	f.Fuzz(func(t *testing.T, which, pos uint8, c byte) {
		p := prefixes[int(which)%len(prefixes)]
		tok, err := apikey.Generate(p)
		if err != nil {
			t.Fatal(err)
		}
		i := int(pos) % len(tok)
		if tok[i] == c {
			return
		}
		b := []byte(tok)
		b[i] = c
		if apikey.Valid(string(b), p) {
			t.Fatalf("Valid(%q) = true after changing byte %d of %q", b, i, tok)
		}
	})
}
