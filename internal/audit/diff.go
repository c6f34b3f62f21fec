package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// Diff returns the changes between before and after, two values of the
// same JSON object shape (a domain type, or a map): one entry per field
// whose JSON differs, keyed by its JSON name. A nil before records a
// creation (every field is new), a nil after a deletion.
//
// Fields named in secret appear as keybridge.Redacted on each side where
// they hold a value; a dotted name ("settings.access_key") reaches into
// an object field. Whatever the caller names, fields that are secret by
// their name alone (see secretNames) are redacted too, so a forgotten
// argument cannot put a password or a key into the log.
func Diff(before, after any, secret ...string) map[string]keybridge.Change {
	old, err := fieldsOf(before)
	if err != nil {
		panic(fmt.Sprintf("audit.Diff: %v", err))
	}
	cur, err := fieldsOf(after)
	if err != nil {
		panic(fmt.Sprintf("audit.Diff: %v", err))
	}
	changes := map[string]keybridge.Change{}
	for _, m := range []map[string]json.RawMessage{old, cur} {
		for name := range m {
			if _, done := changes[name]; done {
				continue
			}
			o, oOK := old[name]
			n, nOK := cur[name]
			if oOK == nOK && bytes.Equal(o, n) {
				continue
			}
			changes[name] = keybridge.Change{Old: decodeValue(o, oOK), New: decodeValue(n, nOK)}
		}
	}
	if len(changes) == 0 {
		return nil
	}
	return Redact(changes, secret...)
}

// fieldsOf encodes v and splits the JSON object into its fields.
func fieldsOf(v any) (map[string]json.RawMessage, error) {
	if v == nil {
		return map[string]json.RawMessage{}, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%T is not a JSON object", v)
	}
	if m == nil { // a nil pointer or map
		m = map[string]json.RawMessage{}
	}
	return m, nil
}

// decodeValue turns a field's JSON into the plain value the audit log
// stores: the form it reads back, so the event's hash is the same before
// and after a round trip through the database.
func decodeValue(raw json.RawMessage, present bool) any {
	if !present {
		return nil
	}
	var v any
	d := json.NewDecoder(bytes.NewReader(raw))
	// json.Number keeps large integers exact, as the store reads them back.
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return nil
	}
	return v
}

// secretNames are field names that hold a secret wherever they appear.
// The comparison ignores case.
var secretNames = map[string]bool{
	"password":          true,
	"password_hash":     true,
	"secret":            true,
	"secret_hash":       true,
	"secret_sealed":     true,
	"api_key":           true,
	"token":             true,
	"hash":              true,
	"access_key":        true,
	"access_key_secret": true,
	"secret_access_key": true,
	"session_token":     true,
	"ciphertext":        true,
	"sealed":            true,
	"settings_sealed":   true,
	"key_sealed":        true,
	"invite_token":      true,
	"csrf_token":        true,
	"master_key":        true,
}

// Redact returns changes with the named fields, and every field that is
// secret by its name, replaced by keybridge.Redacted on each side where
// they hold a value. A dotted name reaches into object values. It modifies
// and returns changes.
func Redact(changes map[string]keybridge.Change, secret ...string) map[string]keybridge.Change {
	for name, c := range changes {
		if isSecretName(name) {
			changes[name] = keybridge.Change{Old: redactValue(c.Old), New: redactValue(c.New)}
			continue
		}
		changes[name] = keybridge.Change{Old: redactNested(c.Old), New: redactNested(c.New)}
	}
	for _, path := range secret {
		top, rest, nested := strings.Cut(path, ".")
		c, ok := changes[top]
		if !ok {
			continue
		}
		if !nested {
			changes[top] = keybridge.Change{Old: redactValue(c.Old), New: redactValue(c.New)}
			continue
		}
		changes[top] = keybridge.Change{Old: redactPath(c.Old, rest), New: redactPath(c.New, rest)}
	}
	return changes
}

func isSecretName(name string) bool { return secretNames[strings.ToLower(name)] }

// redactValue hides a value, keeping only whether there was one.
func redactValue(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		if x == "" {
			return ""
		}
	}
	return keybridge.Redacted
}

// redactNested hides secret-named fields inside object values.
func redactNested(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, val := range x {
			if isSecretName(k) {
				out[k] = redactValue(val)
			} else {
				out[k] = redactNested(val)
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, val := range x {
			out[i] = redactNested(val)
		}
		return out
	}
	return v
}

// redactPath hides the field at a dotted path inside an object value.
func redactPath(v any, path string) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	out := make(map[string]any, len(m))
	for k, val := range m {
		out[k] = val
	}
	top, rest, nested := strings.Cut(path, ".")
	if val, ok := out[top]; ok {
		if nested {
			out[top] = redactPath(val, rest)
		} else {
			out[top] = redactValue(val)
		}
	}
	return out
}
