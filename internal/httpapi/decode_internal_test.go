package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// strictTargets are request types with every shape the decoder handles:
// embedded structs, optional fields, pointers, nested structs, secrets,
// times, custom unmarshalers, slices, a top-level array.
var strictTargets = []func() any{
	func() any { return new(createKeyRequest) },
	func() any { return new(updateKeyRequest) },
	func() any { return new(createProviderRequest) },
	func() any { return new(updateProviderRequest) },
	func() any { return new(testProviderRequest) },
	func() any { return new([]leakReport) },
	func() any { return new(updateAIKeyRequest) },
}

// FuzzDecodeJSON checks the strict decoder against encoding/json: whatever
// it accepts, encoding/json accepts too and reads the same value (strict
// only ever refuses more), and whatever it refuses is a 400 or 413 error of
// ours, never a panic.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{
		`{"name":"k","permissions":["gateway:invoke"],"token_budget":5,"budget_period":"day","expires_at":"2030-01-01T00:00:00Z","allowed_models":["gpt-4o"]}`,
		`{"name":null,"token_budget":null,"expires_at":null,"allowed_models":[]}`,
		`{"name":"b","type":"bedrock","settings":{"region":"us-east-1","access_key":"AKIA","access_key_secret":"s"}}`,
		`[{"token":"kb_x","type":"t","url":"u","source":"s"}]`,
		`{"name":"caf\u00e9 \ud83d\ude00","NAME":1,"name":2}`,
	} {
		for i := range strictTargets {
			f.Add(uint8(i), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		mk := strictTargets[int(which)%len(strictTargets)]
		strict, loose := mk(), mk()
		err := decodeJSON(data, strict)
		if err != nil {
			var ke *keybridge.Error
			if !errors.As(err, &ke) || (ke.Code != keybridge.EInvalid && ke.Code != keybridge.ETooLarge) {
				t.Fatalf("decodeJSON(%q) = %v, want an invalid_argument error", data, err)
			}
			for field, why := range ke.Fields {
				if field == "" || why == "" {
					t.Fatalf("decodeJSON(%q): error field %q: %q, want both named", data, field, why)
				}
			}
			return
		}
		if lerr := json.Unmarshal(data, loose); lerr != nil {
			t.Fatalf("decodeJSON(%q) accepted what encoding/json refuses: %v", data, lerr)
		}
		if !reflect.DeepEqual(strict, loose) {
			t.Fatalf("decodeJSON(%q) = %#v\nencoding/json = %#v", data, strict, loose)
		}
	})
}

func BenchmarkDecodeJSON(b *testing.B) {
	body := []byte(`{"name":"ci key","description":"for the build","permissions":["gateway:invoke","providers:read"],"expires_at":"2030-01-01T00:00:00Z","rate_limit_rpm":600,"token_budget":1000000,"budget_period":"month","allowed_models":["gpt-4o","claude-*"]}`)
	b.Run("strict", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v createKeyRequest
			if err := decodeJSON(body, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v createKeyRequest
			if err := json.Unmarshal(body, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestDecodeJSONManyKeys: an object of 60,000 keys inside a body, with
// and without a repeated key, is refused naming the right thing; the set
// that takes over past smallObject keys keeps this linear (comparing each
// key with all before it would be 1.8e9 comparisons).
func TestDecodeJSONManyKeys(t *testing.T) {
	for _, dup := range []bool{false, true} {
		var b []byte
		b = append(b, `{"name":{`...)
		for i := range 60000 {
			if i > 0 {
				b = append(b, ',')
			}
			b = fmt.Appendf(b, `"k%d":0`, i)
		}
		if dup {
			b = append(b, `,"k59999":1`...)
		}
		b = append(b, `}}`...)
		var v createOrgRequest
		err := decodeJSON(b, &v)
		var ke *keybridge.Error
		want := "must be a string"
		if dup {
			want = "appears more than once"
		}
		if !errors.As(err, &ke) || !strings.Contains(fmt.Sprint(ke.Fields), want) {
			t.Errorf("decodeJSON(%d keys, duplicate %v) = %v, want %q", 60000, dup, err, want)
		}
	}
}
