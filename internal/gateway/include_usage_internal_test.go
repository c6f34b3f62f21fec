package gateway

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// emptyChoicesForward is hasEmptyChoices as a forward scan from each
// "choices", overlapping ones included: the plain reading of its rule,
// which the backward scan must match.
func emptyChoicesForward(ev []byte) bool {
	key := []byte(`"choices"`)
	for {
		i := bytes.Index(ev, key)
		if i < 0 {
			return false
		}
		j := skipSpace(ev, i+len(key))
		if j < len(ev) && ev[j] == ':' {
			if j = skipSpace(ev, j+1); j < len(ev) && ev[j] == '[' {
				if j = skipSpace(ev, j+1); j < len(ev) && ev[j] == ']' {
					return true
				}
			}
		}
		ev = ev[i+1:]
	}
}

func TestHasEmptyChoicesMatchesForwardScan(t *testing.T) {
	for _, s := range []string{
		`data: {"choices":[],"usage":{}}`, `{"choices" : [ ] }`, "{\"choices\"\r\n:\t[\n]}", `{"choices":[{}]}`,
		`{"choices":[]`, `"choices":[`, `choices":[]`, `{"xchoices":[]}`, `]`, `[]`, `:[]`, `"choices"]`,
		`{"a":[],"choices":[1],"b":"choices":[]}`, `""choices":[]`, "",
	} {
		if got, want := hasEmptyChoices([]byte(s)), emptyChoicesForward([]byte(s)); got != want {
			t.Errorf("hasEmptyChoices(%q) = %v, want %v", s, got, want)
		}
	}
	// The rule's own pieces come often, so that many inputs hold it.
	parts := []string{`"choices"`, `"choices"`, `"choices":`, `:`, `:[`, `[`, `[]`, `]`, `]`, ` `, "\t", "\n", "\r",
		`"choice"`, `choices"`, `"`, `{`, `}`, `,`, `a`, `"usage"`, `[{`, `}]`}
	r := rand.New(rand.NewPCG(1, 2))
	matched := 0
	for range 200_000 {
		var b []byte
		for range 1 + r.IntN(12) {
			b = append(b, parts[r.IntN(len(parts))]...)
		}
		got, want := hasEmptyChoices(b), emptyChoicesForward(b)
		if got != want {
			t.Fatalf("hasEmptyChoices(%q) = %v, want %v", b, got, want)
		}
		if want {
			matched++
		}
	}
	if matched < 1000 {
		t.Errorf("only %d of the random inputs hold empty choices: the test reaches too little", matched)
	}
}
