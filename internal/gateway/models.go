package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// The model allowlist (SPEC §7.2). A restricted key's request must name
// only allowed models, and must name one unless it only lists models or
// counts tokens. It may not open a WebSocket, whose frames name the
// models it calls. Unrestricted keys, nearly all of them, pay one comparison.
//
// Where the model is read, by provider type:
//
//   - bedrock: the /model/{id}/... path, URL-unescaped (ARNs hold %2F);
//   - google: the /models/{model}:... path, after an optional version;
//   - azure-openai: the /openai/deployments/{deployment}/... path, since
//     the deployment, not the body, picks the model there;
//   - every provider, when its path names none: each top-level "model"
//     member of a JSON body (Bedrock's and Gemini's OpenAI-compatible
//     endpoints take it there too), or each "model" field of a
//     multipart/form-data body (OpenAI's audio and image edits).
//
// A path is the caller's as sent and, when that names no model, the whole
// path the provider is sent, the base URL's path first: an Azure base URL
// may end in /openai, the caller's path then starting at /deployments/.
//
// The upstream uses the path's model when there is one, so the body is
// not read then. The query is never read: a ?model= parameter is not
// what any of these APIs bills. Every top-level "model" is checked, not
// only the first, because parsers that keep the last of duplicate members
// would otherwise see another model than this check did.

// allowModel enforces the caller's allowlist on the request, answering
// 403 itself when it refuses. It needs the route and the body.
func (x *exchange) allowModel() bool {
	if refused := x.modelRefusal(x.principal.AllowedModels); refused != nil {
		x.fail(refused)
		return false
	}
	return true
}

// modelRefusal is why allowlist m refuses the request, or nil when it
// allows it.
func (x *exchange) modelRefusal(m keybridge.ModelMatcher) *gwError {
	if !m.Restricted() {
		return nil
	}
	if isUpgrade(x.r) {
		// A tunnel's frames name the models it calls, and are not read:
		// whatever the upgrade's path or body names, the frames could
		// call another.
		return newError(keybridge.EForbidden, "this key is limited to some models, and a WebSocket's models cannot be checked: use HTTP requests")
	}
	// A path with a dot segment ("/model/a/../b", which a server may
	// resolve to another model than the one checked) was refused before.
	path := x.path
	if model, inPath := x.modelInPath(); inPath {
		if strings.IndexByte(model, '/') >= 0 && hasDotSegment(model) {
			// An ARN's %2F decoded: "allowed%2F..%2Fother" matches
			// "allowed*" but names another model to a server that
			// decodes it and resolves the dots.
			return newError(keybridge.EForbidden, "this key is limited to some models, and the request path's model holds a dot segment")
		}
		if !m.Allows(model) {
			return modelRefused(model)
		}
		return nil
	}
	var body []byte
	if x.body != nil {
		body = *x.body
	}
	if boundary, ok := multipartForm(x.r.Header); ok {
		// OpenAI's audio transcriptions and translations, image edits:
		// the model is a form field.
		return formModelRefusal(m, body, boundary)
	}
	var refused *gwError
	named, ok := scanModels(body, func(raw []byte, str bool) bool {
		if !str {
			refused = newError(keybridge.EForbidden, "this key is limited to some models, and the request's \"model\" is not a string")
			return false
		}
		if allowsJSONString(m, raw) {
			return true
		}
		refused = modelRefused(jsonString(raw))
		return false
	})
	switch {
	case refused != nil:
		return refused
	case named && ok, modelFree(x.r.Method, path):
		return nil
	}
	return newError(keybridge.EForbidden, "this key is limited to some models, and the request names none: send the model in the JSON body's \"model\"")
}

// multipartForm returns the boundary of a multipart/form-data body.
func multipartForm(h http.Header) (string, bool) {
	ct := header(h, "Content-Type")
	if !hasPrefixFold(ct, "multipart/form-data") {
		return "", false
	}
	_, params, err := mime.ParseMediaType(ct)
	if err != nil || params["boundary"] == "" {
		return "", false
	}
	return params["boundary"], true
}

// maxFormModel is the longest model form field read: longer names no
// model anyone allows.
const maxFormModel = 256

// errFormUnread refuses a restricted key's form that cannot be read to its
// end, or holds a model field too long to be one.
var errFormUnread = newError(keybridge.EForbidden, "this key is limited to some models, and the request's form cannot be read")

// formModelRefusal checks every "model" field of a multipart/form-data
// body, as scanModels checks every top-level JSON "model": a server that
// keeps the first or the last of two must see one this check allowed. A
// form that cannot be read to its end, or names no model, is refused.
func formModelRefusal(m keybridge.ModelMatcher, body []byte, boundary string) *gwError {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	named := false
	for {
		part, err := mr.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return errFormUnread
		}
		if part.FormName() != "model" {
			continue
		}
		v, err := io.ReadAll(io.LimitReader(part, maxFormModel+1))
		if err != nil || len(v) > maxFormModel {
			return errFormUnread
		}
		if !m.Allows(string(v)) {
			return modelRefused(string(v))
		}
		named = true
	}
	if !named {
		return newError(keybridge.EForbidden, "this key is limited to some models, and the request names none: send the model in the form's \"model\" field")
	}
	return nil
}

func modelRefused(model string) *gwError {
	return newError(keybridge.EForbidden, fmt.Sprintf("model %q is not allowed for this key: see the key's allowed_models", model))
}

// modelInPath returns the model the request's path names, if it names
// one: the caller's path, else the whole path the provider is sent, the
// base URL's path first. Where the model sits at a fixed prefix, the two
// paths are read without being joined.
func (x *exchange) modelInPath() (string, bool) {
	pt, base := x.rt.provider.Type, x.rt.basePath
	if model, ok := pathModel(pt, x.path); ok || base == "" {
		return model, ok
	}
	prefix := modelPrefix(pt)
	switch {
	case pt == keybridge.ProviderGoogle:
		return pathModel(pt, base+x.path)
	case prefix == "":
		return "", false // the type's paths name no model
	case strings.HasPrefix(prefix, base):
		// The joined path starts with prefix if the caller's holds the
		// rest of it: Azure's usual base URL, /openai.
		return segmentAfter(x.path, prefix[len(base):])
	case strings.HasPrefix(base, prefix):
		return pathModel(pt, base+x.path) // the base URL names the model
	}
	return "", false
}

// modelPrefix is the path prefix after which a provider type's paths name
// their model, "" for the types whose paths name none at a fixed place.
func modelPrefix(pt keybridge.ProviderType) string {
	switch pt {
	case keybridge.ProviderBedrock:
		return "/model/"
	case keybridge.ProviderAzureOpenAI:
		return "/openai/deployments/"
	}
	return ""
}

// pathModel returns the model a provider's path names, if it names one.
func pathModel(pt keybridge.ProviderType, path string) (string, bool) {
	switch pt {
	case keybridge.ProviderBedrock, keybridge.ProviderAzureOpenAI:
		return segmentAfter(path, modelPrefix(pt))
	case keybridge.ProviderGoogle:
		// /v1beta/models/{model}:generateContent, or without a version;
		// a tuned model, /v1beta/tunedModels/{id}:generateContent, is
		// named as Google names it, "tunedModels/{id}".
		if len(path) > 0 && !hasPrefixFold(path, "/models/") && !hasPrefixFold(path, "/tunedModels/") {
			if v := strings.IndexByte(path[1:], '/'); v >= 0 {
				path = path[1+v:] // past the version
			}
		}
		kind := ""
		rest, ok := cutPrefixFold(path, "/models/")
		if !ok {
			if rest, ok = cutPrefixFold(path, "/tunedModels/"); !ok {
				return "", false
			}
			kind = "tunedModels/"
		}
		seg, _, _ := strings.Cut(rest, "/")
		seg, err := url.PathUnescape(seg)
		if err != nil {
			return seg, true // a model nobody allows: refused
		}
		model, _, hasAction := strings.Cut(seg, ":")
		// GET /v1beta/models/{model} reads about a model, calling none.
		return kind + model, hasAction
	}
	return "", false
}

// segmentAfter returns the URL-unescaped path segment after prefix, when
// path starts with it.
func segmentAfter(path, prefix string) (string, bool) {
	rest, ok := cutPrefixFold(path, prefix)
	if !ok {
		return "", false
	}
	seg, _, _ := strings.Cut(rest, "/")
	if strings.IndexByte(seg, '%') < 0 {
		return seg, true
	}
	if u, err := url.PathUnescape(seg); err == nil {
		return u, true
	}
	return seg, true // a model nobody allows: refused
}

// cutPrefixFold is strings.CutPrefix with the prefix matched in any
// letter case: a provider that reads its paths so must not find a model
// where the allowlist found none.
func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return s, false
	}
	return s[len(prefix):], true
}

func hasPrefixFold(s, prefix string) bool {
	_, ok := cutPrefixFold(s, prefix)
	return ok
}

// hasDotSegment reports whether path holds a "." or ".." segment, as sent
// or percent-encoded.
func hasDotSegment(path string) bool {
	if strings.IndexByte(path, '.') < 0 && strings.IndexByte(path, '%') < 0 {
		return false // most requests
	}
	for seg := range strings.SplitSeq(path, "/") {
		switch {
		case seg == "." || seg == "..":
			return true
		case len(seg) >= 3 && len(seg) <= 6 && strings.ContainsRune(seg, '%'):
			if u, err := url.PathUnescape(seg); err == nil && (u == "." || u == "..") {
				return true
			}
		}
	}
	return false
}

// modelFree reports whether a request may name no model on a restricted
// key: it lists or describes models, or counts tokens.
func modelFree(method, path string) bool {
	if method == http.MethodGet {
		for seg := range strings.SplitSeq(path, "/") {
			if seg == "models" {
				return true
			}
		}
		return false
	}
	return strings.HasSuffix(path, "/messages/count_tokens") || // Anthropic
		strings.HasSuffix(path, "/responses/input_tokens") || // OpenAI
		strings.HasSuffix(path, ":countTokens") // Gemini (whose path names the model anyway)
}

// allowsJSONString checks a JSON string token, quotes included, against m.
// The common case, no escapes, converts no bytes to a heap string.
func allowsJSONString(m keybridge.ModelMatcher, raw []byte) bool {
	inner := raw[1 : len(raw)-1]
	for _, c := range inner {
		if c == '\\' {
			return m.Allows(jsonString(raw))
		}
	}
	return m.Allows(string(inner))
}

// jsonString decodes a JSON string token that scanModels accepted.
func jsonString(raw []byte) string {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return string(raw)
	}
	return s
}

// scanModels walks the top level of the JSON object body and calls visit
// with the value of each "model" member (its name in any letter case):
// the string token, quotes and escapes as sent, and str=true; or for a
// value of another kind, its raw bytes and str=false. It stops when visit
// returns false. named reports whether any "model" member was seen; ok
// whether body is one JSON object whose top level was read to its end.
//
// It reads the top level strictly (member names and the "model" value are
// real JSON strings, escapes included) and skips other values by their
// brackets and strings without decoding them: no allocation, one pass.
// Nested content is not validated: a provider's strict parser refuses a
// body that is not JSON, so nothing this skips can reach a model.
func scanModels(body []byte, visit func(raw []byte, str bool) bool) (named, ok bool) {
	ok = scanTopLevel(body, func(key, val []byte, str bool) bool {
		if key == nil {
			return true
		}
		// In any letter case: Go's encoding/json, behind many
		// OpenAI-compatible servers, reads "Model" as "model".
		if !bytes.EqualFold(memberName(key), []byte("model")) {
			return true
		}
		named = true
		return visit(val, str)
	})
	return named, ok
}

// scanTopLevel walks the top level of the JSON object body, calling visit
// with each member's name (the string token, quotes and escapes as sent)
// and value (raw bytes; str when a string), until visit returns false
// (then ok is true). ok reports whether body is one JSON object whose top
// level was read to its end. Names and strings at the top level are read
// strictly; nested values are skipped by their brackets and strings
// without decoding: no allocation, one pass.
func scanTopLevel(body []byte, visit func(key, val []byte, str bool) bool) (ok bool) {
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return false
	}
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return skipSpace(body, i+1) == len(body)
	}
	for {
		if i >= len(body) || body[i] != '"' {
			return false
		}
		end, _, good := scanString(body, i)
		if !good {
			return false
		}
		key := body[i:end]
		i = skipSpace(body, end)
		if i >= len(body) || body[i] != ':' {
			return false
		}
		i = skipSpace(body, i+1)
		vEnd, str, good := skipValue(body, i)
		if !good {
			return false
		}
		if !visit(key, body[i:vEnd], str) {
			return true
		}
		i = skipSpace(body, vEnd)
		if i >= len(body) {
			return false
		}
		switch body[i] {
		case ',':
			i = skipSpace(body, i+1)
		case '}':
			return skipSpace(body, i+1) == len(body)
		default:
			return false
		}
	}
}

// scanString reads the JSON string starting at b[i] == '"' and returns
// the index just past its closing quote.
func scanString(b []byte, i int) (end int, escaped, ok bool) {
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, escaped, true
		case c == '\\':
			escaped = true
			if j+1 >= len(b) {
				return 0, false, false
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j++
			case 'u':
				if j+5 >= len(b) || !isHex(b[j+2]) || !isHex(b[j+3]) || !isHex(b[j+4]) || !isHex(b[j+5]) {
					return 0, false, false
				}
				j += 5
			default:
				return 0, false, false
			}
		case c < 0x20:
			return 0, false, false
		}
	}
	return 0, false, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// skipValue returns the index just past the value starting at b[i], and
// whether it is a string.
func skipValue(b []byte, i int) (end int, str, ok bool) {
	if i >= len(b) {
		return 0, false, false
	}
	switch b[i] {
	case '"':
		end, _, ok := scanString(b, i)
		return end, true, ok
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				e, _, ok := scanString(b, j)
				if !ok {
					return 0, false, false
				}
				j = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, false, true
				}
			}
		}
		return 0, false, false
	}
	j := i
	for j < len(b) {
		switch b[j] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return j, false, j > i
		}
		j++
	}
	return j, false, j > i
}
