package gateway

import (
	"bytes"
	"encoding/json"
	"time"

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

// takesStreamOptions reports whether the request's provider takes
// stream_options: every one but Azure OpenAI on an api-version that
// refuses it.
func (x *exchange) takesStreamOptions() bool {
	if x.rt.provider.Type != keybridge.ProviderAzureOpenAI {
		return true
	}
	v, _ := x.azureAPIVersion()
	return azureTakesStreamOptions(v)
}

// azureTakesStreamOptions reports whether Azure OpenAI's api-version v
// takes stream_options: versions before 2024-09-01-preview refuse it (400
// "Unrecognized request argument supplied: stream_options"), and a stream
// that works without the gateway must not fail through it. Versions named
// otherwise than by date (the v1 API's "preview", "latest") are newer.
func azureTakesStreamOptions(v string) bool {
	if len(v) < len("2006-01-02") {
		return true
	}
	if _, err := time.Parse("2006-01-02", v[:10]); err != nil {
		return true
	}
	return v[:10] >= "2024-09-01"
}

// injectIncludeUsage returns body with stream_options.include_usage set,
// every other byte kept: without stream_options, the member is added
// after the opening brace; otherwise include_usage is added to each
// stream_options object, or its value made true (each of them, should a
// client send a member twice: parsers differ on which one counts).
func injectIncludeUsage(body []byte, f *reqFields) []byte {
	out := make([]byte, 0, len(body)+40)
	if f.streamOptions == nil {
		i := bytes.IndexByte(body, '{')
		out = append(out, body[:i+1]...)
		out = append(out, `"stream_options":{"include_usage":true}`...)
		if rest := bytes.TrimSpace(body[i+1:]); len(rest) > 0 && rest[0] != '}' {
			out = append(out, ',')
		}
		return append(out, body[i+1:]...)
	}
	out, _ = replaceMembers(out, body, "stream_options", func(out, v []byte) []byte {
		switch {
		case string(v) == "null":
			return append(out, `{"include_usage":true}`...)
		case v[0] != '{':
			return append(out, v...) // not ours to mend: the provider refuses it
		}
		n := len(out)
		out, found := replaceMembers(out, v, "include_usage", func(out, _ []byte) []byte { return append(out, "true"...) })
		if found {
			return out
		}
		out = append(out[:n], '{')
		out = append(out, `"include_usage":true`...)
		if rest := bytes.TrimSpace(v[1:]); rest[0] != '}' {
			out = append(out, ',')
		}
		return append(out, v[1:]...)
	})
	return out
}

// replaceMembers appends JSON object obj to out with the value of each
// top-level member named name (escapes decoded) replaced by what with
// appends in its place, and reports whether there was one; every other
// byte stays.
func replaceMembers(out, obj []byte, name string, with func(out, val []byte) []byte) ([]byte, bool) {
	last, found := 0, false
	scanTopLevel(obj, func(key, val []byte, _ bool) bool {
		if string(memberName(key)) == name {
			at := cap(obj) - cap(val) // val is obj[at : at+len(val)]
			out = append(out, obj[last:at]...)
			out = with(out, val)
			last, found = at+len(val), true
		}
		return true
	})
	return append(out, obj[last:]...), found
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
