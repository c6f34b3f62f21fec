package keybridge

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Secret holds a plaintext secret (a provider key, a password, a token) in
// a type that refuses to print itself: fmt, encoding/json and slog all see
// "[redacted]". Reveal is the one way to the value, so every use is greppable.
//
// The value sits behind a pointer because fmt cannot call methods on a
// Secret in an unexported field: it prints such fields by reflection, and
// a pointer there prints as an address, never as what it points to.
type Secret struct{ v *string }

// NewSecret wraps s.
func NewSecret(s string) Secret { return Secret{v: &s} }

// Reveal returns the plaintext.
func (s Secret) Reveal() string {
	if s.v == nil {
		return ""
	}
	return *s.v
}

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s.Reveal() == "" }

const redacted = "[redacted]"

// String implements fmt.Stringer.
func (s Secret) String() string { return redacted }

// GoString implements fmt.GoStringer, for %#v.
func (s Secret) GoString() string { return redacted }

// Format implements fmt.Formatter, so that every verb, %d and %x
// included, prints [redacted] rather than the fields.
func (s Secret) Format(f fmt.State, verb rune) { f.Write([]byte(redacted)) }

// MarshalJSON implements json.Marshaler.
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler.
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue implements slog.LogValuer.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// UnmarshalJSON implements json.Unmarshaler, so request bodies can carry a
// secret straight into a Secret: it reads a JSON string (null leaves it
// empty). Anything else is an invalid_argument error.
func (s *Secret) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var v string
	if err := json.Unmarshal(b, &v); err != nil {
		return Errorf(EInvalid, "a secret must be a JSON string")
	}
	s.v = &v
	return nil
}

// Redacted is the text that stands in for a secret in output and audit diffs.
const Redacted = redacted

// DataKey is one version of the key ring's data keys, wrapped (encrypted)
// by the master key. Only internal/secrets unwraps it.
type DataKey struct {
	Version   int
	Wrapped   []byte
	Primary   bool
	CreatedAt time.Time
}

// SealedRef names one encrypted value at rest, for the key ring's rewrap and
// status: the table and column it lives in, its row, and the data key
// version that sealed it.
type SealedRef struct {
	Table      string
	Column     string
	RowID      string
	Version    int
	Ciphertext []byte
}

// AssociatedData is what a sealed value is bound to: its table, column and
// row, so a ciphertext copied elsewhere does not open.
func (r SealedRef) AssociatedData() []byte {
	return AssociatedData(r.Table, r.Column, r.RowID)
}

// AssociatedData builds the associated data for a value in table.column of
// row id.
func AssociatedData(table, column, id string) []byte {
	return []byte("keybridge:" + table + "." + column + ":" + id)
}

// SealedColumn names a column whose values are sealed by the key ring. It is
// the one place each binding is spelled: whoever seals, opens or rewraps a
// value of the column binds it through the column's AD, and the store
// registers the same table and column for rewrap.
type SealedColumn struct {
	Table  string
	Column string
}

// The sealed columns.
var (
	// SealedProviderSettings holds a provider's whole settings object.
	SealedProviderSettings = SealedColumn{Table: "providers", Column: "settings"}
	// SealedProviderKey holds an upstream key of a provider.
	SealedProviderKey = SealedColumn{Table: "provider_keys", Column: "api_key"}
	// SealedCredential holds a user's personal provider key.
	SealedCredential = SealedColumn{Table: "user_credentials", Column: "api_key"}
	// SealedAIKeySecret holds the secret of an AWS AI key, which verifying
	// a SigV4 signature needs in the clear (SPEC §5).
	SealedAIKeySecret = SealedColumn{Table: "ai_keys", Column: "secret_sealed"}
)

// AD is the associated data of the column's value in row id.
func (c SealedColumn) AD(id string) []byte { return AssociatedData(c.Table, c.Column, id) }

// MaxSecretLen bounds a pasted secret: a provider key, a personal key, a
// settings secret. Real ones are far shorter (a Gemini key is 39
// characters, an OpenAI project key ~160).
const MaxSecretLen = 4096

// SecretProblem says what is wrong with a pasted secret, or returns "" when
// nothing is. Every provider's keys and AWS's key pairs are one word of
// printable ASCII; anything else is a mangled paste (smart quotes, a stray
// control character) or an attempt to smuggle a header line (CR, LF,
// U+0085, U+2028) into the request that carries the secret. An empty
// secret is the caller's to judge (required or not).
func SecretProblem(s string) string {
	switch {
	case len(s) > MaxSecretLen:
		return "must be at most 4096 characters"
	case strings.ContainsAny(s, "\r\n\t \u0085\u2028\u2029"):
		return "must not contain whitespace or line breaks"
	}
	if !visibleASCII(s) {
		return "must hold only printable ASCII characters, as provider keys do"
	}
	return ""
}
