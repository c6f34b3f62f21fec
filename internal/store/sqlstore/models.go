package sqlstore

import (
	"encoding/json"
	"fmt"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// modelsValue is how a model allowlist is stored: a JSON array, '[]' when
// empty, in a TEXT column both engines have.
func modelsValue(l keybridge.ModelAllowlist) string {
	b, _ := l.MarshalJSON() // a list of strings always encodes
	return string(b)
}

// modelsCol scans a stored model allowlist; an empty one reads as nil.
type modelsCol struct{ l *keybridge.ModelAllowlist }

// Scan implements sql.Scanner.
func (c modelsCol) Scan(src any) error {
	var b []byte
	switch v := src.(type) {
	case string:
		b = []byte(v)
	case []byte:
		b = v
	case nil:
		*c.l = nil
		return nil
	default:
		return fmt.Errorf("allowed_models column holds %T", src)
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("read allowed_models: %w", err)
	}
	if len(l) == 0 {
		l = nil
	}
	*c.l = l
	return nil
}
