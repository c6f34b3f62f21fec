package keybridge_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// plaintext is distinctive, so any trace of it in output is found.
const plaintext = "sk-live-PLAINTEXT-0123456789"

// leaks reports whether out holds the plaintext or a recognisable piece of
// it, in the clear or hex-encoded.
func leaks(out string) bool {
	for _, p := range []string{plaintext, "PLAINTEXT", fmt.Sprintf("%x", "PLAINTEXT"), fmt.Sprintf("%X", "PLAINTEXT")} {
		if strings.Contains(out, p) {
			return true
		}
	}
	return false
}

// Holders of a secret the way the code holds them: in exported and
// unexported fields, by value and by pointer, in slices and maps.
type (
	exported struct {
		Name string
		Key  keybridge.Secret
	}
	unexported struct {
		name string
		key  keybridge.Secret
	}
	nested struct {
		Keys  []keybridge.Secret
		ByID  map[string]keybridge.Secret
		Ptr   *keybridge.Secret
		inner unexported
	}
)

func TestSecretFmt(t *testing.T) {
	s := keybridge.NewSecret(plaintext)
	values := map[string]any{
		"value":              s,
		"pointer":            &s,
		"exported field":     exported{"a", s},
		"unexported field":   unexported{"a", s},
		"pointer to holder":  &unexported{"a", s},
		"slice, map, nested": nested{Keys: []keybridge.Secret{s}, ByID: map[string]keybridge.Secret{"k": s}, Ptr: &s, inner: unexported{"a", s}},
		"any slice":          []any{s, &s},
	}
	for name, v := range values {
		for _, verb := range []string{"%v", "%+v", "%s", "%#v", "%q", "%x", "%X", "%d", "%10.4v", "%-30s"} {
			if out := fmt.Sprintf(verb, v); leaks(out) {
				t.Errorf("%s: fmt %s = %q, leaks the secret", name, verb, out)
			}
		}
		if out := fmt.Sprint(v) + fmt.Sprintln(v); leaks(out) {
			t.Errorf("%s: fmt.Sprint = %q, leaks the secret", name, out)
		}
	}
	if got := fmt.Sprintf("%v|%s|%#v", s, s, s); got != "[redacted]|[redacted]|[redacted]" {
		t.Errorf("fmt of a secret = %q, want [redacted] for each verb", got)
	}
}

func TestSecretJSON(t *testing.T) {
	s := keybridge.NewSecret(plaintext)
	for name, v := range map[string]any{
		"value":          s,
		"struct":         exported{"a", s},
		"pointer fields": struct{ Key *keybridge.Secret }{&s},
		"map":            map[string]keybridge.Secret{"key": s},
		"map key":        map[keybridge.Secret]int{s: 1},
	} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Errorf("%s: json.Marshal: %v", name, err)
			continue
		}
		if leaks(string(b)) || !strings.Contains(string(b), keybridge.Redacted) {
			t.Errorf("%s: json.Marshal = %s, want [redacted] and no secret", name, b)
		}
	}
	b, _ := json.Marshal(exported{"a", s})
	if want := `{"Name":"a","Key":"[redacted]"}`; string(b) != want {
		t.Errorf("json.Marshal = %s, want %s", b, want)
	}
}

func TestSecretSlog(t *testing.T) {
	s := keybridge.NewSecret(plaintext)
	for _, h := range []struct {
		name string
		new  func(*bytes.Buffer) slog.Handler
	}{
		{"json", func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
		{"text", func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
	} {
		t.Run(h.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := slog.New(h.new(&buf))
			log.Info("saved", "key", s, "ptr", &s)
			log.Info("saved", slog.Any("holder", exported{"a", s}), slog.Any("hidden", unexported{"a", s}))
			log.With("key", s).WithGroup("g").Info("saved", "nested", nested{Keys: []keybridge.Secret{s}, Ptr: &s, inner: unexported{"a", s}})
			log.Info("saved", "err", fmt.Errorf("store %v: %w", s, errors.New("boom")))
			out := buf.String()
			if leaks(out) {
				t.Errorf("slog %s output leaks the secret:\n%s", h.name, out)
			}
			if n := strings.Count(out, keybridge.Redacted); n < 6 {
				t.Errorf("slog %s output shows [redacted] %d times, want at least 6:\n%s", h.name, n, out)
			}
		})
	}
}

func TestSecretValue(t *testing.T) {
	for _, tt := range []struct {
		in     string
		isZero bool
	}{{"", true}, {plaintext, false}} {
		s := keybridge.NewSecret(tt.in)
		if s.Reveal() != tt.in || s.IsZero() != tt.isZero {
			t.Errorf("NewSecret(%q): Reveal = %q, IsZero = %v; want %q, %v", tt.in, s.Reveal(), s.IsZero(), tt.in, tt.isZero)
		}
	}
	var zero keybridge.Secret
	if zero.Reveal() != "" || !zero.IsZero() {
		t.Errorf("zero Secret: Reveal = %q, IsZero = %v; want \"\", true", zero.Reveal(), zero.IsZero())
	}
	var got struct{ Key keybridge.Secret }
	if err := json.Unmarshal([]byte(`{"Key":"`+plaintext+`"}`), &got); err != nil || got.Key.Reveal() != plaintext {
		t.Errorf("json.Unmarshal into a Secret = %q, %v; want the plaintext", got.Key.Reveal(), err)
	}
}

// Every stored value was sealed bound to these exact bytes: a binding that
// changed would leave each of them unopenable.
func TestSealedColumnBindings(t *testing.T) {
	for _, c := range []struct {
		col  keybridge.SealedColumn
		want string
	}{
		{keybridge.SealedProviderSettings, "keybridge:providers.settings:row-1"},
		{keybridge.SealedProviderKey, "keybridge:provider_keys.api_key:row-1"},
		{keybridge.SealedCredential, "keybridge:user_credentials.api_key:row-1"},
		{keybridge.SealedAIKeySecret, "keybridge:ai_keys.secret_sealed:row-1"},
	} {
		if got := string(c.col.AD("row-1")); got != c.want {
			t.Errorf("%+v.AD(row-1) = %q, want %q", c.col, got, c.want)
		}
		ref := keybridge.SealedRef{Table: c.col.Table, Column: c.col.Column, RowID: "row-1"}
		if got := string(ref.AssociatedData()); got != c.want {
			t.Errorf("SealedRef of %+v binds %q, want %q: a rewrap must open what the column sealed", c.col, got, c.want)
		}
	}
}
