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

// Matcher returns the list in the form the gateway checks requests
// against. The list must be valid (see Validate): an empty entry would
// read as no restriction at all.
func (l ModelAllowlist) Matcher() ModelMatcher {
	return ModelMatcher{patterns: strings.Join(l, "\n")}
}

// ModelMatcher is a model allowlist compiled for the gateway: its entries
// in one string, so that a Principal holding it stays comparable and
// checking a model allocates nothing. The zero value allows every model.
type ModelMatcher struct {
	patterns string // the entries, each ended by '\n' but the last
}

// Restricted reports whether the matcher allows only some models.
func (m ModelMatcher) Restricted() bool { return m.patterns != "" }

// Allows reports whether model may be called: an exact entry, or an entry
// "prefix*" that model starts with. It makes at most one comparison per
// entry and does not allocate.
func (m ModelMatcher) Allows(model string) bool {
	if m.patterns == "" {
		return true
	}
	rest := m.patterns
	for {
		p, next, more := strings.Cut(rest, "\n")
		if n := len(p) - 1; n >= 0 && p[n] == '*' {
			if strings.HasPrefix(model, p[:n]) {
				return true
			}
		} else if p == model {
			return true
		}
		if !more {
			return false
		}
		rest = next
	}
}

// List returns the entries again, for messages and tests.
func (m ModelMatcher) List() ModelAllowlist {
	if m.patterns == "" {
		return nil
	}
	return strings.Split(m.patterns, "\n")
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
