package gateway

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"net/http"
	"strconv"
	"strings"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// This file reads token usage (SPEC §7.7) from response bytes as they are
// relayed. Nothing here holds a response back or parses a whole body: a
// small streaming JSON walker picks the few numbers a usage object has out
// of the bytes, and for event streams only the events that can carry usage
// are walked at all.

// tokens is what one response reports (SPEC §7.7).
type tokens struct{ Input, Output, CacheRead, CacheWrite int64 }

// usageScanner reads usage from a response body as it is relayed, in chunks
// of any size and split, never retaining p, never allocating per chunk in
// steady state.
type usageScanner interface {
	// Write takes bytes of the response body, after HTTP chunked framing.
	Write(p []byte)
	// Tokens is what was seen so far with the cumulative rules applied;
	// false: nothing seen.
	Tokens() (tokens, bool)
	// Failure is the status of an error the provider reported in the
	// body (usage_fail.go), 0 if none.
	Failure() int
}

// maxUsageEvent bounds what a scanner buffers of one event or message,
// so a huge response cannot make the gateway hold a huge buffer. A larger
// unnamed SSE event or AWS event-stream message is skipped: the events
// that carry usage there are small. Named SSE events are walked as they
// come, whatever their length, and so is a WebSocket message past it: a
// Responses API's last event holds the whole output.
const maxUsageEvent = 1 << 20

// newUsageScanner picks the scanner for a response of provider type t to a
// request path, from its Content-Type; nil when the answer carries no usage
// (e.g. a model list) or cannot be read (a compressed body).
func newUsageScanner(t keybridge.ProviderType, path string, contentType string, h http.Header) usageScanner {
	if ce := header(h, "Content-Encoding"); ce != "" && !strings.EqualFold(ce, "identity") {
		return nil
	}
	f := usageFormatFor(t, path)
	if f == nil {
		return nil
	}
	media := mediaType(contentType)
	sse := media == "text/event-stream"
	jsonBody := jsonMedia(media)
	if f != &formatBedrock {
		return newBodyScanner(f, sse, jsonBody)
	}
	if media == "application/vnd.amazon.eventstream" {
		s := &eventStreamScanner{}
		s.w.init(&formatBedrock.schema)
		return s
	}
	s := &bedrockBodyScanner{head: bedrockHeaderTokens(h)}
	if jsonBody {
		s.w.init(&formatBedrock.schema)
		s.w.begin()
	}
	if !s.head.ok && !jsonBody {
		return nil
	}
	return s
}

// usageFormatFor is the format usage is read in from the answers to path
// of provider type t, or nil for the paths whose answers carry none (a
// model list, a token count). It is also what the gateway meters: those
// paths get uncompressed answers.
//
// Paths are matched in any letter case: a provider that reads its paths
// so must not serve unmetered what would be metered in lower case.
func usageFormatFor(t keybridge.ProviderType, path string) *usageFormat {
	path, _, _ = strings.Cut(path, "?")
	switch t {
	case keybridge.ProviderOpenAI, keybridge.ProviderAzureOpenAI, keybridge.ProviderOpenAICompatible:
		switch {
		case hasSuffixFold(path, "/responses"):
			return &formatResponses
		case hasSuffixFold(path, "/completions"), hasSuffixFold(path, "/embeddings"):
			return &formatChat
		}
	case keybridge.ProviderAnthropic:
		if hasSuffixFold(path, "/messages") {
			return &formatAnthropic
		}
	case keybridge.ProviderGoogle:
		// The action ends the path: /v1beta/models/{model}:{action}.
		action := path[strings.LastIndexByte(path, ':')+1:]
		if strings.EqualFold(action, "generateContent") || strings.EqualFold(action, "streamGenerateContent") {
			return &formatGemini
		}
	case keybridge.ProviderBedrock:
		switch strings.ToLower(path[strings.LastIndexByte(path, '/')+1:]) {
		case "invoke", "converse", "invoke-with-response-stream", "converse-stream":
			return &formatBedrock
		}
	}
	return nil
}

func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}

// newBodyScanner reads a whole-body format as SSE or as JSON.
func newBodyScanner(f *usageFormat, sse, jsonBody bool) usageScanner {
	switch {
	case sse:
		s := &sseScanner{f: f}
		s.w.init(&f.schema)
		return s
	case jsonBody:
		s := &jsonScanner{f: f}
		s.w.init(&f.schema)
		s.w.begin()
		return s
	}
	return nil
}

// Slots of a walker's numbers, each format filling them with its own
// fields and turning them into tokens.
const (
	slotIn = iota
	slotOut
	slotRead
	slotWrite
	slotThoughts
	// slotStatus is not a count: the HTTP status an error event of the
	// Responses API's WebSocket mode names.
	slotStatus
	nSlots

	// String slots, for a response event's type and model, and an
	// error's code or type.
	slotType  = 8
	slotModel = 9
	slotErr   = 10
)

// tokenSlots are the slots that hold counts.
const tokenSlots = 1<<slotStatus - 1

// usageFormat is one provider's way of reporting usage: where its numbers
// are and how they become tokens.
type usageFormat struct {
	schema jschema
	// tokens turns the slots into tokens.
	tokens func(v *[nSlots]int64) tokens
	// wantEvent reports whether a named SSE event can carry usage; nil:
	// the format's events are not named, and a name is ignored.
	wantEvent func(name []byte) bool
	// mayCarry is the cheap test of an unnamed event's data.
	mayCarry func(data []byte) bool
	// typed formats count an unnamed event's usage only if its "type"
	// says it is a usage-bearing event.
	typed bool
	// lazy formats report only the last usage object, so only the last
	// event holding one is kept and walked when the tokens are asked for.
	lazy bool
	// failure is the status of a response the provider failed in its
	// body, from the error's code or type (slotErr; empty when it named
	// none); nil: the format's bodies report no failures.
	failure func(code []byte) int
	// mayFail is the cheap test of an unnamed event's data for a
	// failure; nil: only named events report one.
	mayFail func(data []byte) bool
	// errorEvents: the format's named SSE event "error" reports a
	// failure, and only that; its usage-like fields count for nothing.
	errorEvents bool
}

// openaiTokens: the prompt count includes the cached part (OpenAI chat and
// Responses, Gemini). A cached part larger than the prompt (a provider's
// error) leaves no input, rather than a negative count that would credit
// the key's limits.
func openaiTokens(v *[nSlots]int64) tokens {
	return tokens{Input: max(v[slotIn]-v[slotRead], 0), CacheRead: v[slotRead], Output: addSat(v[slotOut], v[slotThoughts])}
}

// anthropicTokens: the input count excludes the cached parts (Anthropic,
// Bedrock).
func anthropicTokens(v *[nSlots]int64) tokens {
	return tokens{Input: v[slotIn], Output: v[slotOut], CacheRead: v[slotRead], CacheWrite: v[slotWrite]}
}

var (
	formatChat = usageFormat{
		schema: newSchema([]string{"usage"},
			jleaf{"usage.prompt_tokens", slotIn},
			jleaf{"usage.prompt_tokens_details.cached_tokens", slotRead},
			jleaf{"usage.completion_tokens", slotOut},
			jleaf{"error.type", slotErr},
		),
		tokens:   openaiTokens,
		mayCarry: func(d []byte) bool { return hasObject(d, keyUsage) },
		failure:  openaiFailure,
		mayFail:  isErrorObject,
	}
	formatResponses = usageFormat{
		schema: newSchema([]string{"usage", "response.usage"},
			jleaf{"usage.input_tokens", slotIn},
			jleaf{"usage.input_tokens_details.cached_tokens", slotRead},
			jleaf{"usage.output_tokens", slotOut},
			jleaf{"response.usage.input_tokens", slotIn},
			jleaf{"response.usage.input_tokens_details.cached_tokens", slotRead},
			jleaf{"response.usage.output_tokens", slotOut},
			jleaf{"response.model", slotModel},
			jleaf{"type", slotType},
			// A failed response's error, a body's, an error event's.
			jleaf{"response.error.code", slotErr},
			jleaf{"error.code", slotErr},
			jleaf{"code", slotErr},
			jleaf{"status", slotStatus},
		),
		tokens:      openaiTokens,
		wantEvent:   isResponseDone,
		mayCarry:    func(d []byte) bool { return hasObject(d, keyUsage) },
		typed:       true,
		failure:     openaiFailure,
		mayFail:     func(d []byte) bool { return keyFailed.index(d) >= 0 || isErrorEvent(d) || isErrorObject(d) },
		errorEvents: true,
	}
	formatAnthropic = usageFormat{
		// message_delta's usage is cumulative and may repeat the input
		// fields: each field's last value counts, so nothing is reset.
		schema: newSchema(nil, append(anthropicLeaves("usage", "message.usage"), jleaf{"error.type", slotErr})...),
		tokens: anthropicTokens,
		wantEvent: func(n []byte) bool {
			return string(n) == "message_start" || string(n) == "message_delta"
		},
		mayCarry:    func(d []byte) bool { return hasObject(d, keyUsage) },
		failure:     anthropicFailure,
		errorEvents: true,
	}
	formatGemini = usageFormat{
		schema: newSchema([]string{"usageMetadata"},
			jleaf{"usageMetadata.promptTokenCount", slotIn},
			jleaf{"usageMetadata.cachedContentTokenCount", slotRead},
			jleaf{"usageMetadata.candidatesTokenCount", slotOut},
			jleaf{"usageMetadata.thoughtsTokenCount", slotThoughts},
			jleaf{"error.status", slotErr},
		),
		tokens:   openaiTokens,
		mayCarry: func(d []byte) bool { return hasObject(d, keyUsageMetadata) },
		lazy:     true,
		failure:  geminiFailure,
		mayFail:  isErrorObject,
	}
	// formatBedrock covers every body Bedrock's runtime answers with:
	// Anthropic's on invoke of Claude (and inside stream chunks), Converse's
	// and Nova's usage, Converse's stream metadata and the invocation
	// metrics of a stream's last chunk, which count over what the chunks
	// before said.
	formatBedrock = usageFormat{
		schema: newSchema(nil, append(anthropicLeaves("usage", "message.usage"),
			jleaf{"usage.inputTokens", slotIn},
			jleaf{"usage.outputTokens", slotOut},
			jleaf{"usage.cacheReadInputTokens", slotRead},
			jleaf{"usage.cacheWriteInputTokens", slotWrite},
			jleaf{"usage.cacheReadInputTokenCount", slotRead},
			jleaf{"usage.cacheWriteInputTokenCount", slotWrite},
			jleaf{"metadata.usage.inputTokens", slotIn},
			jleaf{"metadata.usage.outputTokens", slotOut},
			jleaf{"metadata.usage.cacheReadInputTokens", slotRead},
			jleaf{"metadata.usage.cacheWriteInputTokens", slotWrite},
			jleaf{"metadata.usage.cacheReadInputTokenCount", slotRead},
			jleaf{"metadata.usage.cacheWriteInputTokenCount", slotWrite},
			jleaf{"amazon-bedrock-invocationMetrics.inputTokenCount", slotIn},
			jleaf{"amazon-bedrock-invocationMetrics.outputTokenCount", slotOut},
			jleaf{"amazon-bedrock-invocationMetrics.cacheReadInputTokenCount", slotRead},
			jleaf{"amazon-bedrock-invocationMetrics.cacheWriteInputTokenCount", slotWrite},
		)...),
		tokens: anthropicTokens,
		mayCarry: func(d []byte) bool {
			return hasObject(d, keyUsage) || hasObject(d, keyInvocationMetrics)
		},
	}
)

func anthropicLeaves(prefixes ...string) []jleaf {
	var l []jleaf
	for _, p := range prefixes {
		l = append(l,
			jleaf{p + ".input_tokens", slotIn},
			jleaf{p + ".output_tokens", slotOut},
			jleaf{p + ".cache_read_input_tokens", slotRead},
			jleaf{p + ".cache_creation_input_tokens", slotWrite},
		)
	}
	return l
}

// failureOf is the status of the failure a walker has seen in f's
// bodies, 0 if none: the HTTP status a Responses error event names, an
// error's code or type, or a Responses event that says its response
// failed.
func failureOf(f *usageFormat, w *jwalk) int {
	if f.failure == nil {
		return 0
	}
	var typ []byte
	if f.typed && w.set&(1<<slotType) != 0 {
		typ = w.str(slotType)
	}
	errorEvent := string(typ) == "error"
	switch st := w.vals[slotStatus]; {
	case errorEvent && w.set&(1<<slotStatus) != 0 && st >= 400 && st <= 599:
		return int(st)
	case w.set&(1<<slotErr) != 0:
		return f.failure(w.str(slotErr))
	case errorEvent || string(typ) == "response.failed":
		return f.failure(nil)
	}
	return 0
}

// isResponseDone reports whether a Responses event type is one whose
// response carries the final usage.
func isResponseDone(typ []byte) bool {
	switch string(typ) {
	case "response.completed", "response.incomplete", "response.failed":
		return true
	}
	return false
}

// Keys the cheap tests look for, each with the index of a byte that is
// rare in JSON text, so that the search skips ahead with IndexByte instead
// of stopping at every quote.
var (
	keyUsage             = searchKey{[]byte(`"usage"`), 4}
	keyUsageMetadata     = searchKey{[]byte(`"usageMetadata"`), 6}
	keyInvocationMetrics = searchKey{[]byte(`"amazon-bedrock-invocationMetrics"`), 26}
	lineFeed             = []byte{'\n'}
)

type searchKey struct {
	b      []byte
	anchor int
}

// index is bytes.Index(data, k.b), faster on JSON.
func (k searchKey) index(data []byte) int {
	c := k.b[k.anchor]
	for i := k.anchor; i < len(data); {
		j := bytes.IndexByte(data[i:], c)
		if j < 0 {
			return -1
		}
		i += j
		if start := i - k.anchor; start+len(k.b) <= len(data) && bytes.Equal(data[start:start+len(k.b)], k.b) {
			return start
		}
		i++
	}
	return -1
}

// hasObject reports whether data holds key followed by a colon and an
// object: `"usage":{`, not the `"usage":null` of every OpenAI chunk.
func hasObject(data []byte, key searchKey) bool {
	for {
		i := key.index(data)
		if i < 0 {
			return false
		}
		data = data[i+len(key.b):]
		j := skipSpace(data, 0)
		if j < len(data) && data[j] == ':' {
			j = skipSpace(data, j+1)
			if j < len(data) && data[j] == '{' {
				return true
			}
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// walkerTokens is what a walker has seen, in f's terms.
func walkerTokens(f *usageFormat, w *jwalk) (tokens, bool) {
	if w.set&tokenSlots == 0 {
		return tokens{}, false
	}
	return f.tokens(&w.vals), true
}

// jsonScanner reads a JSON body, or Gemini's stream of one JSON array,
// whose elements each are a response.
type jsonScanner struct {
	f *usageFormat
	w jwalk
}

func (s *jsonScanner) Write(p []byte)         { s.w.write(p) }
func (s *jsonScanner) Tokens() (tokens, bool) { return walkerTokens(s.f, &s.w) }
func (s *jsonScanner) Failure() int           { return failureOf(s.f, &s.w) }

// bedrockBodyScanner reads a Bedrock body's usage, and falls back on the
// token-count headers for bodies whose usage it does not know (models
// other than Claude's and Nova's on invoke).
type bedrockBodyScanner struct {
	head headerTokens
	w    jwalk
}

type headerTokens struct {
	t  tokens
	ok bool
}

func (s *bedrockBodyScanner) Write(p []byte) {
	if s.w.sc != nil {
		s.w.write(p)
	}
}

func (s *bedrockBodyScanner) Tokens() (tokens, bool) {
	if s.w.sc != nil {
		if t, ok := walkerTokens(&formatBedrock, &s.w); ok {
			return t, true
		}
	}
	return s.head.t, s.head.ok
}

// Failure: a Bedrock body that failed is an error answer, never read.
func (s *bedrockBodyScanner) Failure() int { return 0 }

// bedrockHeaderTokens reads the x-amzn-bedrock-*-token-count headers.
func bedrockHeaderTokens(h http.Header) headerTokens {
	var ht headerTokens
	for _, f := range [...]struct {
		name string
		dst  *int64
	}{
		{"X-Amzn-Bedrock-Input-Token-Count", &ht.t.Input},
		{"X-Amzn-Bedrock-Output-Token-Count", &ht.t.Output},
		{"X-Amzn-Bedrock-Cache-Read-Input-Token-Count", &ht.t.CacheRead},
		{"X-Amzn-Bedrock-Cache-Write-Input-Token-Count", &ht.t.CacheWrite},
	} {
		if v := h.Get(f.name); v != "" {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil && n >= 0 {
				*f.dst, ht.ok = n, true
			}
		}
	}
	return ht
}

// sseScanner reads a server-sent event stream: it finds event boundaries
// and field lines itself, drops events whose name says they carry no usage
// without copying them, and walks the rest.
type sseScanner struct {
	f *usageFormat
	w jwalk

	ls    uint8 // where in a line the stream is
	kind  uint8 // the current line's field
	sawCR bool  // the last byte ended a line with CR: an LF after it belongs to it
	field [8]byte
	flen  int

	name     [64]byte
	nlen     int
	hasData  bool   // the event has had a data line
	skip     bool   // the event cannot carry usage, or outgrew maxUsageEvent
	direct   bool   // data goes straight to the walker: the name asked for it
	errOnly  bool   // the event is the format's error event: only its error counts
	data     []byte // the event's data, for unnamed events
	pending  []byte // a lazy format's last event holding usage
	dirty    bool   // pending has not been walked
	snapshot [nSlots]int64
	snapSet  uint16
	failed   int // the status of a failure the stream reported, 0 if none
}

// Line positions.
const (
	lsStart uint8 = iota
	lsField
	lsSpace // after the colon: one space is skipped
	lsValue
)

// Fields the scanner looks at.
const (
	fieldOther uint8 = iota
	fieldData
	fieldEvent
)

func (s *sseScanner) Write(p []byte) {
	for len(p) > 0 {
		if s.sawCR {
			s.sawCR = false
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		switch s.ls {
		case lsStart:
			if c := p[0]; c == '\n' || c == '\r' {
				s.sawCR = c == '\r'
				p = p[1:]
				s.dispatch()
				continue
			}
			s.ls, s.flen = lsField, 0
		case lsField:
			i := 0
			for i < len(p) && p[i] != ':' && p[i] != '\n' && p[i] != '\r' {
				if s.flen < len(s.field) {
					s.field[s.flen] = p[i]
				}
				s.flen++
				i++
			}
			p = p[i:]
			if len(p) == 0 {
				return
			}
			s.startValue()
			if p[0] == ':' {
				p = p[1:]
				s.ls = lsSpace
			} else {
				s.ls = lsValue
			}
		case lsSpace:
			if p[0] == ' ' {
				p = p[1:]
			}
			s.ls = lsValue
		case lsValue:
			e := lineEnd(p)
			seg := p
			if e >= 0 {
				seg = p[:e]
			}
			s.value(seg)
			if e < 0 {
				return
			}
			s.sawCR = p[e] == '\r'
			p = p[e+1:]
			s.endLine()
			s.ls = lsStart
		}
	}
}

// lineEnd is the index of the first CR or LF in p, or -1.
func lineEnd(p []byte) int {
	n := bytes.IndexByte(p, '\n')
	lim := p
	if n >= 0 {
		lim = p[:n]
	}
	if r := bytes.IndexByte(lim, '\r'); r >= 0 {
		return r
	}
	return n
}

// startValue classifies the line whose field name is complete.
func (s *sseScanner) startValue() {
	f := s.field[:min(s.flen, len(s.field))]
	switch {
	case s.flen == 4 && string(f) == "data":
		s.kind = fieldData
		if s.hasData {
			s.value(lineFeed) // data lines are joined with LF
		}
		s.hasData = true
	case s.flen == 5 && string(f) == "event":
		s.kind, s.nlen = fieldEvent, 0
	default:
		s.kind = fieldOther
	}
}

func (s *sseScanner) value(seg []byte) {
	switch s.kind {
	case fieldData:
		switch {
		case s.skip:
		case s.direct:
			s.w.write(seg)
		case len(s.data)+len(seg) > maxUsageEvent:
			s.skip, s.data = true, s.data[:0]
		default:
			s.data = append(s.data, seg...)
		}
	case fieldEvent:
		if s.nlen+len(seg) > len(s.name) {
			s.nlen = len(s.name) + 1 // too long for any name we want
			return
		}
		s.nlen += copy(s.name[s.nlen:], seg)
	}
}

// endLine acts on a complete line: a name decides whether the event is
// worth reading.
func (s *sseScanner) endLine() {
	if s.kind != fieldEvent || s.skip || s.f.wantEvent == nil {
		return
	}
	name := s.name[:min(s.nlen, len(s.name))]
	s.errOnly = s.f.errorEvents && string(name) == "error"
	if s.errOnly {
		// What it says of usage is undone at its end.
		s.snapshot, s.snapSet = s.w.vals, s.w.set
	} else if s.nlen > len(s.name) || !s.f.wantEvent(name) {
		s.skip, s.data = true, s.data[:0]
		return
	}
	if !s.direct {
		s.direct = true
		s.w.begin()
		s.w.write(s.data)
		s.data = s.data[:0]
	}
}

// dispatch ends an event at its blank line.
func (s *sseScanner) dispatch() {
	switch {
	case s.skip, !s.hasData:
	case s.direct:
		s.w.end()
		if s.errOnly {
			if s.noteFailure(); s.failed == 0 {
				s.failed = s.f.failure(nil) // it failed, whatever it said
			}
			s.w.vals, s.w.set = s.snapshot, s.snapSet
			break
		}
		s.noteFailure()
	default:
		fails := s.failed == 0 && s.f.mayFail != nil && s.f.mayFail(s.data)
		if s.f.lazy {
			// An error is read as it comes; usage only from the last
			// event holding one.
			if fails {
				s.walk(s.data)
				s.noteFailure()
			}
			if s.f.mayCarry(s.data) {
				s.pending, s.data = s.data, s.pending
				s.dirty = true
			}
			break
		}
		if !fails && !s.f.mayCarry(s.data) {
			break
		}
		s.snapshot = s.w.vals
		set := s.w.set
		s.w.clear(1<<slotType | 1<<slotModel | 1<<slotStatus)
		s.walk(s.data)
		s.noteFailure()
		if s.f.typed && (s.w.set&(1<<slotType) == 0 || !isResponseDone(s.w.str(slotType))) {
			s.w.vals, s.w.set = s.snapshot, set
		}
	}
	s.nlen, s.hasData, s.skip, s.direct, s.errOnly = 0, false, false, false, false
	s.data = s.data[:0]
}

// walk walks one event's data.
func (s *sseScanner) walk(data []byte) {
	s.w.begin()
	s.w.write(data)
	s.w.end()
}

// noteFailure keeps the first failure the walker has seen.
func (s *sseScanner) noteFailure() {
	if s.failed == 0 {
		s.failed = failureOf(s.f, &s.w)
	}
}

func (s *sseScanner) Failure() int { return s.failed }

func (s *sseScanner) Tokens() (tokens, bool) {
	if s.dirty {
		s.dirty = false
		s.walk(s.pending)
	}
	return walkerTokens(s.f, &s.w)
}

// eventStreamScanner reads AWS event-stream framing (Bedrock's streamed
// responses): each message is a 12-byte prelude (total length, headers
// length, prelude CRC), headers, payload and a message CRC. The CRCs are
// the client's to check; the scanner only needs the lengths. Only "chunk"
// events (invoke-with-response-stream: {"bytes": base64 of the model's own
// event}) and Converse's "metadata" event are read.
type eventStreamScanner struct {
	w jwalk

	part  uint8 // which part of a message the stream is in
	pre   [12]byte
	n     int // bytes of the current part so far
	need  int // bytes the current part has
	after int // payload bytes left once the headers are read
	typ   uint8
	hdr   []byte
	pay   []byte
	dec   []byte
	// failed is the status of the exception the stream ended with.
	failed int
}

const (
	esPrelude uint8 = iota
	esHeaders
	esPayload
	esSkip // payload not wanted, and the message CRC
	esDead // framing made no sense: nothing more is read
)

// What an event-stream message is to the scanner.
const (
	evOther uint8 = iota
	evChunk
	evMetadata
	evException // the stream fails: :exception-type says why
)

func (s *eventStreamScanner) Write(p []byte) {
	for len(p) > 0 {
		switch s.part {
		case esPrelude:
			c := copy(s.pre[s.n:], p)
			s.n += c
			p = p[c:]
			if s.n < len(s.pre) {
				return
			}
			total := int(binary.BigEndian.Uint32(s.pre[0:4]))
			hlen := int(binary.BigEndian.Uint32(s.pre[4:8]))
			if total < 16 || hlen > total-16 {
				s.part = esDead
				return
			}
			s.after = total - 16 - hlen
			s.n, s.need, s.typ = 0, hlen, evOther
			s.hdr = s.hdr[:0]
			s.part = esHeaders
			if hlen > 64<<10 {
				s.part = esSkip
				s.need = hlen + s.after + 4
			}
		case esHeaders:
			c := min(len(p), s.need-s.n)
			s.hdr = append(s.hdr, p[:c]...)
			s.n += c
			p = p[c:]
			if s.n < s.need {
				return
			}
			var exception []byte
			s.typ, exception = eventKind(s.hdr)
			if s.typ == evException && s.failed == 0 {
				s.failed = bedrockFailure(exception)
			}
			s.n, s.need = 0, s.after
			s.pay = s.pay[:0]
			if s.typ == evOther || s.typ == evException || s.after > maxUsageEvent {
				s.part, s.need = esSkip, s.after+4
			} else {
				s.part = esPayload
			}
		case esPayload:
			c := min(len(p), s.need-s.n)
			s.pay = append(s.pay, p[:c]...)
			s.n += c
			p = p[c:]
			if s.n < s.need {
				return
			}
			s.payload()
			s.part, s.n, s.need = esSkip, 0, 4
		case esSkip:
			c := min(len(p), s.need-s.n)
			s.n += c
			p = p[c:]
			if s.n < s.need {
				return
			}
			s.part, s.n = esPrelude, 0
		case esDead:
			return
		}
	}
}

// eventKind reads an event-stream message's headers for its
// :message-type and :event-type, or an exception's :exception-type.
func eventKind(h []byte) (kind uint8, exception []byte) {
	msgType, typ := []byte("event"), []byte(nil)
	for len(h) > 0 {
		nl := int(h[0])
		if len(h) < 1+nl+1 {
			return evOther, nil
		}
		name := h[1 : 1+nl]
		vt := h[1+nl]
		h = h[2+nl:]
		var size int
		switch vt {
		case 0, 1:
		case 2:
			size = 1
		case 3:
			size = 2
		case 4:
			size = 4
		case 5, 8:
			size = 8
		case 9:
			size = 16
		case 6, 7:
			if len(h) < 2 {
				return evOther, nil
			}
			size = 2 + int(binary.BigEndian.Uint16(h))
		default:
			return evOther, nil
		}
		if len(h) < size {
			return evOther, nil
		}
		if vt == 7 {
			v := h[2:size]
			switch string(name) {
			case ":message-type":
				msgType = v
			case ":event-type":
				typ = v
			case ":exception-type":
				exception = v
			}
		}
		h = h[size:]
	}
	switch {
	case string(msgType) == "exception":
		return evException, exception
	case string(msgType) != "event":
		return evOther, nil
	case string(typ) == "chunk":
		return evChunk, nil
	case string(typ) == "metadata":
		return evMetadata, nil
	}
	return evOther, nil
}

var bytesKey = []byte(`"bytes"`)

// b64Needles are the base64 forms of the bytes a usage-bearing chunk
// holds, at each of the three alignments, so that most chunks are passed
// over without being decoded.
var b64Needles = func() [][]byte {
	var out [][]byte
	for _, n := range []string{`"usage"`, `Metrics"`} {
		for a := range 3 {
			src := append(make([]byte, a), n...)
			src = append(src, 0, 0)
			enc := base64.StdEncoding.EncodeToString(src)
			// The characters whose six bits all come from the needle.
			from, to := (8*a+5)/6, 8*(a+len(n))/6
			out = append(out, []byte(enc[from:to]))
		}
	}
	return out
}()

func mayCarryB64(b []byte) bool {
	for _, n := range b64Needles {
		if bytes.Contains(b, n) {
			return true
		}
	}
	return false
}

// payload reads a wanted message's payload.
func (s *eventStreamScanner) payload() {
	data := s.pay
	if s.typ == evChunk {
		// {"bytes":"<base64>"} (and maybe a padding field): the model's
		// event is the base64.
		i := bytes.Index(data, bytesKey)
		if i < 0 {
			return
		}
		rest := data[i+len(bytesKey):]
		j := skipSpace(rest, 0)
		if j >= len(rest) || rest[j] != ':' {
			return
		}
		j = skipSpace(rest, j+1)
		if j >= len(rest) || rest[j] != '"' {
			return
		}
		rest = rest[j+1:]
		end := bytes.IndexByte(rest, '"')
		if end < 0 {
			return
		}
		b64 := rest[:end]
		if !mayCarryB64(b64) {
			return
		}
		if n := base64.StdEncoding.DecodedLen(len(b64)); cap(s.dec) < n {
			s.dec = make([]byte, n)
		}
		n, err := base64.StdEncoding.Decode(s.dec[:cap(s.dec)], b64)
		if err != nil {
			return
		}
		data = s.dec[:n]
	}
	if !formatBedrock.mayCarry(data) {
		return
	}
	s.w.begin()
	s.w.write(data)
	s.w.end()
}

func (s *eventStreamScanner) Tokens() (tokens, bool) { return walkerTokens(&formatBedrock, &s.w) }
func (s *eventStreamScanner) Failure() int           { return s.failed }

// newWSUsageReader reads the server-to-client bytes of a WebSocket
// connection carrying the OpenAI Responses API and calls onResponse once per
// response.completed, response.incomplete or response.failed event, with
// its tokens, the model the response names, and the status it is recorded
// with: 200, or a failed response's (usage_fail.go); and once per error
// event, with no tokens and the error's status.
func newWSUsageReader(onResponse func(t tokens, model string, status int)) *wsUsageReader {
	r := &wsUsageReader{}
	r.on = func(t tokens, model string, status int) {
		r.underway = false
		onResponse(t, model, status)
	}
	r.w.init(&formatResponses.schema)
	return r
}

// Underway reports whether a response is under way: the provider has sent
// a text message since the last response's end (or error event), so a
// socket that ends now cuts that response short.
func (r *wsUsageReader) Underway() bool { return r.underway }

// ClosedNormally reports whether the provider sent a close frame of a
// normal closure (1000, or no code): the answer a server gives to the
// client's close, where a server that fails says 1011 or hangs up.
func (r *wsUsageReader) ClosedNormally() bool {
	if !r.closed {
		return false
	}
	return r.closeN < 2 || binary.BigEndian.Uint16(r.closeCode[:]) == 1000
}

// Keys of the events that end a response, which carry no usage object
// when a server has none to report ("usage": null); response.failed is
// keyFailed.
var (
	keyCompleted  = searchKey{[]byte(`"response.completed"`), 12}
	keyIncomplete = searchKey{[]byte(`"response.incomplete"`), 12}
)

// wsUsageReader follows RFC 6455 framing (without extensions: the gateway
// relays no compressed sockets' usage): text messages, possibly
// fragmented, with control frames between their fragments.
type wsUsageReader struct {
	on func(tokens, string, int)
	w  jwalk

	hdr    [14]byte
	hn     int // header bytes so far
	left   uint64
	inHdr  bool
	fin    bool
	ctrl   bool
	mask   [4]byte
	masked bool
	mpos   int
	text   bool // the message being received is a text message
	// walking: the message outgrew maxUsageEvent, and its bytes go to
	// the walker as they come instead of being held (a response's end
	// holds its whole output, which may be that long).
	walking bool
	msg     []byte
	// underway: a text message came since the last response's end.
	underway bool
	// The provider's close frame: its status code's bytes, once seen.
	closing, closed bool
	closeCode       [2]byte
	closeN          int
}

func (r *wsUsageReader) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if r.left == 0 && !r.inHdr {
			r.inHdr, r.hn = true, 0
		}
		if r.inHdr {
			need := 2
			if r.hn >= 2 {
				need = wsHeaderLen(r.hdr[0], r.hdr[1])
			}
			c := copy(r.hdr[r.hn:need], p)
			r.hn += c
			p = p[c:]
			if r.hn < need {
				continue
			}
			if need == 2 && wsHeaderLen(r.hdr[0], r.hdr[1]) > 2 {
				continue
			}
			r.frame()
			continue
		}
		c := int(min(uint64(len(p)), r.left))
		r.data(p[:c])
		r.left -= uint64(c)
		p = p[c:]
		if r.left == 0 {
			r.frameEnd()
		}
	}
	return n, nil
}

// wsHeaderLen is the length of a frame header from its first two bytes.
func wsHeaderLen(b0, b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// frame starts a frame whose header is complete.
func (r *wsUsageReader) frame() {
	h := r.hdr[:r.hn]
	r.inHdr = false
	r.fin = h[0]&0x80 != 0
	op := h[0] & 0x0f
	r.masked = h[1]&0x80 != 0
	l, i := uint64(h[1]&0x7f), 2
	switch l {
	case 126:
		l, i = uint64(binary.BigEndian.Uint16(h[2:])), 4
	case 127:
		l, i = binary.BigEndian.Uint64(h[2:]), 10
	}
	if r.masked {
		copy(r.mask[:], h[i:i+4])
	}
	r.mpos = 0
	r.left = l
	r.ctrl = op >= 8
	r.closing = op == 8
	switch op {
	case 1: // text: a new message
		r.text, r.walking, r.msg = true, false, r.msg[:0]
		r.underway = true
	case 2: // binary
		r.text = false
	}
	if l == 0 {
		r.frameEnd()
	}
}

func (r *wsUsageReader) data(p []byte) {
	if r.closing && !r.closed {
		for _, c := range p {
			if r.closeN == len(r.closeCode) {
				break
			}
			if r.masked {
				c ^= r.mask[r.mpos&3]
				r.mpos++
			}
			r.closeCode[r.closeN] = c
			r.closeN++
		}
	}
	if r.ctrl || !r.text {
		return
	}
	if !r.walking && len(r.msg)+len(p) > maxUsageEvent {
		r.walking = true
		r.walk()
	}
	if r.walking {
		r.msg = r.msg[:0]
	}
	start := len(r.msg)
	r.msg = append(r.msg, p...)
	if r.masked {
		for i := start; i < len(r.msg); i++ {
			r.msg[i] ^= r.mask[r.mpos&3]
			r.mpos++
		}
	}
	if r.walking {
		r.w.write(r.msg)
	}
}

// walk starts the walker on a new message, with what is held of it.
func (r *wsUsageReader) walk() {
	r.w.begin()
	r.w.clear(^uint16(0))
	r.w.write(r.msg)
}

func (r *wsUsageReader) frameEnd() {
	if r.closing {
		r.closed = true
	}
	if r.ctrl || !r.fin || !r.text {
		return
	}
	r.text = false
	if !r.walking {
		if !formatResponses.mayCarry(r.msg) && !formatResponses.mayFail(r.msg) &&
			keyCompleted.index(r.msg) < 0 && keyIncomplete.index(r.msg) < 0 {
			return
		}
		r.walk()
	}
	r.walking = false
	r.w.end()
	if r.w.set&(1<<slotType) == 0 {
		return
	}
	typ := r.w.str(slotType)
	if string(typ) == "error" {
		// A response.create refused, or a response cut short: it ends
		// the request in flight, and its usage-like fields are none.
		r.on(tokens{}, "", failureOf(&formatResponses, &r.w))
		return
	}
	if !isResponseDone(typ) {
		return
	}
	// A response that ends is a request, with the usage it reports or
	// none.
	t, _ := walkerTokens(&formatResponses, &r.w)
	status := http.StatusOK
	if f := failureOf(&formatResponses, &r.w); f != 0 {
		status = f
	}
	var model string
	if r.w.set&(1<<slotModel) != 0 {
		model = string(r.w.str(slotModel))
	}
	r.on(t, model, status)
}

// jschema is a trie of the JSON paths a walker wants: numbers into numeric
// slots, short strings into string slots.
type jschema struct {
	nodes []jnode // nodes[0] is the root
}

type jnode struct {
	key   string
	kids  []int16
	slot  int    // -1: not a leaf
	reset uint16 // slots cleared when this object begins: its last one counts whole
}

// jleaf is a dotted path and the slot its value goes to.
type jleaf struct {
	path string
	slot int
}

// newSchema builds the trie; objects at the paths in resets count whole:
// entering one forgets what an earlier one said.
func newSchema(resets []string, leaves ...jleaf) jschema {
	sc := jschema{nodes: []jnode{{slot: -1}}}
	node := func(path string) int {
		n := 0
		for k := range strings.SplitSeq(path, ".") {
			next := -1
			for _, c := range sc.nodes[n].kids {
				if sc.nodes[c].key == k {
					next = int(c)
				}
			}
			if next < 0 {
				next = len(sc.nodes)
				sc.nodes = append(sc.nodes, jnode{key: k, slot: -1})
				sc.nodes[n].kids = append(sc.nodes[n].kids, int16(next))
			}
			n = next
		}
		return n
	}
	for _, l := range leaves {
		sc.nodes[node(l.path)].slot = l.slot
	}
	for _, r := range resets {
		prefix := r + "."
		var bits uint16
		for _, l := range leaves {
			if strings.HasPrefix(l.path, prefix) && l.slot < nSlots {
				bits |= 1 << l.slot
			}
		}
		sc.nodes[node(r)].reset = bits
	}
	return sc
}

// jwalk is a streaming JSON walker: fed bytes in pieces of any size, it
// tracks just enough structure to know, at each value, whether the schema
// wants it, and skips everything else at the speed of bytes.IndexByte
// inside strings. It is lenient: it does not validate, and input that is
// not JSON yields no values rather than an error.
type jwalk struct {
	sc     *jschema
	st     uint8
	esc    bool
	depth  int
	skipTo int      // in jsSkip: the depth the container closes to
	skStr  bool     // in jsSkip: inside a string
	frames [6]int16 // nodes of the wanted containers at depth 1..nf; -1 a root array
	nf     int
	leaf   int // node of the value about to start, -1: unwanted
	key    [40]byte
	klen   int
	num    int64
	numOK  bool
	digits bool
	frac   bool

	vals [nSlots]int64
	set  uint16
	strs [3][128]byte
	slen [3]int
}

// Walker states.
const (
	jsValue  uint8 = iota // a value may start
	jsKey                 // in a wanted object: a key or its end
	jsKeyStr              // in a key
	jsColon               // after a key
	jsStr                 // in a string value
	jsScalar              // in a number or literal
	jsAfter               // after a value
	jsSkip                // inside an unwanted container, down to depth skipTo
)

func (w *jwalk) init(sc *jschema) { w.sc = sc }

// begin starts a new JSON text, keeping the values seen so far.
func (w *jwalk) begin() {
	w.st, w.esc, w.depth, w.nf, w.leaf = jsValue, false, 0, 0, 0
}

// end finishes the text: a number at its very end is complete.
func (w *jwalk) end() {
	if w.st == jsScalar {
		w.endScalar()
	}
	w.st = jsAfter
}

// clear forgets the slots in bits, so that an object counting whole
// leaves no field of an earlier one behind.
func (w *jwalk) clear(bits uint16) {
	w.set &^= bits
	for i := range w.vals {
		if bits&(1<<i) != 0 {
			w.vals[i] = 0
		}
	}
}

// str is a string slot's value.
func (w *jwalk) str(slot int) []byte { return w.strs[slot-slotType][:w.slen[slot-slotType]] }

func (w *jwalk) write(p []byte) {
	for len(p) > 0 {
		switch w.st {
		case jsKeyStr, jsStr:
			p = w.inString(p)
			continue
		case jsSkip:
			p = w.skip(p)
			continue
		case jsScalar:
			c := p[0]
			if c == ',' || c == '}' || c == ']' || c == ':' || c == ' ' || c == '\n' || c == '\r' || c == '\t' {
				w.endScalar()
				continue // the delimiter is read in jsAfter
			}
			if w.leaf >= 0 {
				switch {
				case c >= '0' && c <= '9':
					if !w.frac {
						w.num = w.num*10 + int64(c-'0')
					}
					w.digits = true
				case c == '.':
					w.frac = true
				default:
					w.numOK = false
				}
			}
			p = p[1:]
			continue
		}
		c := p[0]
		p = p[1:]
		if c == ' ' || c == '\n' || c == '\r' || c == '\t' {
			continue
		}
		switch w.st {
		case jsValue:
			w.startValue(c)
		case jsKey:
			switch c {
			case '"':
				w.st, w.klen = jsKeyStr, 0
			case '}':
				w.close()
			}
		case jsColon:
			if c == ':' {
				w.leaf = w.match()
				w.st = jsValue
			}
		case jsAfter:
			switch c {
			case ',':
				if w.depth == w.nf && w.nf > 0 {
					if w.frames[w.nf-1] >= 0 {
						w.st = jsKey
						continue
					}
					w.st, w.leaf = jsValue, 0 // the next element of a root array
					continue
				}
				w.st, w.leaf = jsValue, -1
			case ':':
				w.st, w.leaf = jsValue, -1
			case '}', ']':
				w.close()
			}
		}
	}
}

// startValue reads the first byte of a value.
func (w *jwalk) startValue(c byte) {
	wanted := w.leaf >= 0 && w.depth == w.nf
	switch c {
	case '{':
		if wanted && len(w.sc.nodes[w.leaf].kids) > 0 && w.nf < len(w.frames) {
			w.frames[w.nf] = int16(w.leaf)
			w.nf++
			w.clear(w.sc.nodes[w.leaf].reset)
			w.depth++
			w.st = jsKey
			return
		}
		w.skipContainer()
	case '[':
		if wanted && w.depth == 0 && w.leaf == 0 {
			w.frames[0] = -1
			w.nf = 1
			w.depth = 1
			w.st, w.leaf = jsValue, 0
			return
		}
		w.skipContainer()
	case '}', ']':
		w.close()
	case '"':
		w.st = jsStr
		if !wanted || w.sc.nodes[w.leaf].slot < slotType {
			w.leaf = -1
		} else {
			w.slen[w.sc.nodes[w.leaf].slot-slotType] = 0
		}
	default:
		w.st = jsScalar
		if !wanted || w.sc.nodes[w.leaf].slot < 0 || w.sc.nodes[w.leaf].slot >= nSlots {
			w.leaf = -1
		}
		w.num, w.numOK, w.digits, w.frac = 0, true, false, false
		if w.leaf >= 0 {
			switch {
			case c >= '0' && c <= '9':
				w.num, w.digits = int64(c-'0'), true
			default:
				w.numOK = false // negative, or a literal
			}
		}
	}
}

func (w *jwalk) endScalar() {
	if w.leaf >= 0 && w.numOK && w.digits {
		s := w.sc.nodes[w.leaf].slot
		w.vals[s] = w.num
		w.set |= 1 << s
	}
	w.st, w.leaf = jsAfter, -1
}

func (w *jwalk) close() {
	if w.depth == 0 {
		return
	}
	if w.depth == w.nf {
		w.nf--
	}
	w.depth--
	w.st, w.leaf = jsAfter, -1
}

// skipContainer enters a container the schema wants nothing of: nothing
// inside it can be wanted, so it is passed counting only its brackets.
func (w *jwalk) skipContainer() {
	w.skipTo = w.depth
	w.depth++
	w.st, w.leaf, w.skStr = jsSkip, -1, false
}

// skip reads an unwanted container's bytes up to its closing bracket,
// looking only at brackets and quotes.
func (w *jwalk) skip(p []byte) []byte {
	for len(p) > 0 {
		if w.skStr {
			_, rest, closed := w.strPart(p)
			p, w.skStr = rest, !closed
			continue
		}
		i := 0
		for ; i < len(p) && !w.skStr; i++ {
			switch p[i] {
			case '"':
				w.skStr = true
			case '{', '[':
				w.depth++
			case '}', ']':
				if w.depth--; w.depth == w.skipTo {
					w.st = jsAfter
					return p[i+1:]
				}
			}
		}
		p = p[i:]
	}
	return nil
}

// match finds the key just read among the children of the current object.
func (w *jwalk) match() int {
	if w.depth != w.nf || w.nf == 0 || w.klen > len(w.key) {
		return -1
	}
	k := w.key[:w.klen]
	for _, c := range w.sc.nodes[w.frames[w.nf-1]].kids {
		if w.sc.nodes[c].key == string(k) {
			return int(c)
		}
	}
	return -1
}

// inString reads string bytes up to the closing quote.
func (w *jwalk) inString(p []byte) []byte {
	seg, rest, closed := w.strPart(p)
	w.collect(seg)
	if !closed {
		return rest
	}
	if w.st == jsKeyStr {
		w.st = jsColon
	} else {
		if w.leaf >= 0 {
			w.set |= 1 << w.sc.nodes[w.leaf].slot
		}
		w.st, w.leaf = jsAfter, -1
	}
	return rest
}

// strPart reads a string's bytes up to its next escape or its closing
// quote, at the speed of bytes.IndexByte: seg is what of p belongs to the
// string as sent (an escape's backslash and the escaped byte included),
// rest what follows, closed whether the closing quote was read.
func (w *jwalk) strPart(p []byte) (seg, rest []byte, closed bool) {
	if w.esc {
		w.esc = false
		return p[:1], p[1:], false
	}
	q := bytes.IndexByte(p, '"')
	seg = p
	if q >= 0 {
		seg = p[:q]
	}
	if b := bytes.IndexByte(seg, '\\'); b >= 0 {
		w.esc = true
		return p[:b+1], p[b+1:], false
	}
	if q < 0 {
		return p, nil, false
	}
	return seg, p[q+1:], true
}

// collect keeps the bytes of a key, or of a wanted string.
func (w *jwalk) collect(b []byte) {
	if w.st == jsKeyStr {
		if w.klen+len(b) > len(w.key) {
			w.klen = len(w.key) + 1
			return
		}
		w.klen += copy(w.key[w.klen:], b)
		return
	}
	if w.leaf < 0 {
		return
	}
	i := w.sc.nodes[w.leaf].slot - slotType
	w.slen[i] += copy(w.strs[i][w.slen[i]:], b)
}
