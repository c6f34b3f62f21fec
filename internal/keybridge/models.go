package keybridge

import (
	"encoding/json"
	"fmt"
	"strings"
)

// The bounds of a model allowlist (SPEC §7.2).
const (
	MaxAllowedModels   = 64
	maxModelPatternLen = 200
)

// ModelAllowlist is the models a platform key or AI key may call through
// the gateway (SPEC §7.2): exact names, and patterns "prefix*" that match
// every name starting with prefix. An empty list allows every model.
type ModelAllowlist []string

// MarshalJSON implements json.Marshaler. An empty list is [], never null,
// so a client reads the field the same way whether it was ever set.
func (l ModelAllowlist) MarshalJSON() ([]byte, error) {
	if len(l) == 0 {
		return []byte("[]"), nil
	}
	return json.Marshal([]string(l))
}

// Allows reports whether model may be called. It runs on every gateway
// request of a restricted key, so it only compares strings: no
// allocation, at most 64 comparisons.
func (l ModelAllowlist) Allows(model string) bool {
	if len(l) == 0 {
		return true
	}
	for _, p := range l {
		if n := len(p) - 1; n >= 0 && p[n] == '*' {
			if strings.HasPrefix(model, p[:n]) {
				return true
			}
		} else if p == model {
			return true
		}
	}
	return false
}

// Validate records under field what is wrong with the list: more than 64
// entries, an empty or overlong entry, one that is not printable ASCII,
// a '*' anywhere but at the end, or an entry given twice. Entries are
// matched as written, so leading or trailing spaces are refused too: they
// would silently match nothing.
func (l ModelAllowlist) Validate(v Validation, field string) {
	if len(l) > MaxAllowedModels {
		v.Add(field, fmt.Sprintf("must hold at most %d entries", MaxAllowedModels))
		return
	}
	seen := make(map[string]bool, len(l))
	for i, p := range l {
		switch {
		case p == "":
			v.Add(field, fmt.Sprintf("entry %d is empty", i))
		case len(p) > maxModelPatternLen:
			v.Add(field, fmt.Sprintf("entry %d is over %d characters", i, maxModelPatternLen))
		case !printableASCII(p):
			v.Add(field, fmt.Sprintf("entry %d must be printable ASCII", i))
		case strings.TrimSpace(p) != p:
			v.Add(field, fmt.Sprintf("entry %d has leading or trailing spaces", i))
		case strings.IndexByte(p, '*') < len(p)-1 && strings.IndexByte(p, '*') >= 0:
			v.Add(field, fmt.Sprintf("entry %d: '*' may only end a pattern (\"prefix*\")", i))
		case seen[p]:
			v.Add(field, fmt.Sprintf("entry %d (%q) is listed twice", i, p))
		}
		seen[p] = true
	}
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
