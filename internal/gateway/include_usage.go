package gateway

import (
	"bytes"
	"encoding/json"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// A streamed OpenAI chat completion reports its usage only when the
// request asks for it (stream_options.include_usage). The gateway asks on
// the client's behalf, so that every stream is metered (SPEC §7.7), and
// removes the usage-only chunk this adds from what the client receives:
// metering never changes what a client sees.

// wantsUsageInjected reports whether a request to path of provider type t
// is a streamed chat completion that does not ask for usage itself.
func wantsUsageInjected(t keybridge.ProviderType, path string, f *reqFields) bool {
	switch t {
	case keybridge.ProviderOpenAI, keybridge.ProviderAzureOpenAI, keybridge.ProviderOpenAICompatible:
	default:
		return false
	}
	if !hasSuffixFold(path, "/chat/completions") || !f.ok || !f.stream {
		return false
	}
	if f.streamOptions == nil || string(f.streamOptions) == "null" {
		return true
	}
	var opts struct {
		IncludeUsage *bool `json:"include_usage"`
	}
	if json.Unmarshal(f.streamOptions, &opts) != nil {
		return false // not an object: the provider will say so
	}
	return opts.IncludeUsage == nil || !*opts.IncludeUsage
}

// injectIncludeUsage returns body with stream_options.include_usage set.
// Without stream_options it is added after the opening brace, every other
// byte kept; otherwise the object is merged (rare: a client that sets
// stream options mostly asks for usage too).
func injectIncludeUsage(body []byte, f *reqFields) []byte {
	if f.streamOptions == nil {
		i := bytes.IndexByte(body, '{')
		out := make([]byte, 0, len(body)+40)
		out = append(out, body[:i+1]...)
		out = append(out, `"stream_options":{"include_usage":true}`...)
		if rest := bytes.TrimSpace(body[i+1:]); len(rest) > 0 && rest[0] != '}' {
			out = append(out, ',')
		}
		return append(out, body[i+1:]...)
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(body, &top) != nil {
		return body
	}
	var opts map[string]json.RawMessage
	if so := top["stream_options"]; json.Unmarshal(so, &opts) != nil || opts == nil {
		opts = map[string]json.RawMessage{}
	}
	opts["include_usage"] = json.RawMessage("true")
	b, err := json.Marshal(opts)
	if err != nil {
		return body
	}
	top["stream_options"] = b
	if b, err = json.Marshal(top); err != nil {
		return body
	}
	return b
}

// usageChunkFilter drops, from an SSE stream of chat completion chunks,
// the chunk that carries only usage ("choices": [] and a usage object).
// Events pass as soon as they are complete; only the bytes of an event
// whose end has not arrived yet are held.
type usageChunkFilter struct {
	pending []byte // the start of an event whose end has not arrived
	out     []byte
}

// maxHeldEvent bounds what is held of one event: a chunk this long is no
// usage-only chunk, and passes unexamined.
const maxHeldEvent = 64 << 10

// filter returns what of p (and what was held) may go to the client now.
// While nothing is held or dropped, that is a prefix of p itself: events
// pass without a copy.
func (f *usageChunkFilter) filter(p []byte) []byte {
	data := p
	held := len(f.pending) > 0
	if held {
		f.pending = append(f.pending, p...)
		data = f.pending
	}
	f.out = f.out[:0]
	dropped := false
	off := 0
	for {
		end, n := eventEnd(data[off:])
		if end < 0 {
			break
		}
		ev := data[off : off+end+n]
		switch {
		case isUsageOnlyChunk(ev):
			if !dropped {
				f.out = append(f.out, data[:off]...)
				dropped = true
			}
		case dropped:
			f.out = append(f.out, ev...)
		}
		off += len(ev)
	}
	if rest := data[off:]; len(rest) > maxHeldEvent {
		// No usage-only chunk is this long: it passes unexamined.
		if dropped {
			f.out = append(f.out, rest...)
		}
		off = len(data)
	}
	out := data[:off]
	switch {
	case dropped:
		out = f.out
	case held:
		// data is pending, which is about to keep only the rest.
		out = append(f.out, out...)
		f.out = out
	}
	f.pending = append(f.pending[:0], data[off:]...)
	return out
}

// flush returns what is held, at the end of the stream.
func (f *usageChunkFilter) flush() []byte {
	out := f.pending
	f.pending = nil
	return out
}

// eventEnd finds the blank line ending the first SSE event in b: its
// index and length ("\n\n" or "\r\n\r\n"), or -1.
func eventEnd(b []byte) (int, int) {
	for off := 0; ; {
		j := bytes.IndexByte(b[off:], '\n')
		if j < 0 {
			return -1, 0
		}
		i := off + j
		if i+1 < len(b) && b[i+1] == '\n' {
			return i, 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i, 3
		}
		off = i + 1
	}
}

// isUsageOnlyChunk reports whether an SSE event is a chat completion
// chunk with no choices and a usage object: the chunk include_usage adds.
func isUsageOnlyChunk(ev []byte) bool {
	// Every chunk of such a stream names usage (null on all but one), so
	// the cheap test is for the empty choices; only a chunk that passes
	// it is decoded.
	if !hasEmptyChoices(ev) || !bytes.Contains(ev, []byte(`"usage"`)) {
		return false
	}
	data, ok := bytes.CutPrefix(bytes.TrimSpace(ev), []byte("data:"))
	if !ok {
		return false
	}
	// The members as encoding/json would take them: the last of a name
	// wins.
	var emptyChoices, usage bool
	ok = scanTopLevel(bytes.TrimSpace(data), func(key, val []byte, _ bool) bool {
		switch string(key) {
		case `"choices"`:
			emptyChoices = val[0] == '[' && skipSpace(val, 1) == len(val)-1
		case `"usage"`:
			usage = val[0] == '{'
		}
		return true
	})
	return ok && emptyChoices && usage
}

// hasEmptyChoices reports whether ev holds "choices" followed by an
// empty array, white space allowed: a scan, no decoding. It looks from
// each ']' back, since a chunk has few of them and '"' is everywhere.
func hasEmptyChoices(ev []byte) bool {
	const key = `"choices"`
	for off := 0; ; {
		i := bytes.IndexByte(ev[off:], ']')
		if i < 0 {
			return false
		}
		i += off
		if j := skipSpaceBack(ev, i); j > 0 && ev[j-1] == '[' {
			if j = skipSpaceBack(ev, j-1); j > 0 && ev[j-1] == ':' {
				if j = skipSpaceBack(ev, j-1); j >= len(key) && string(ev[j-len(key):j]) == key {
					return true
				}
			}
		}
		off = i + 1
	}
}

// skipSpaceBack is skipSpace backwards: the end of what precedes b[:i]'s
// trailing white space.
func skipSpaceBack(b []byte, i int) int {
	for i > 0 && (b[i-1] == ' ' || b[i-1] == '\t' || b[i-1] == '\n' || b[i-1] == '\r') {
		i--
	}
	return i
}
