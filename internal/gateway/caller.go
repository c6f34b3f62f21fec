package gateway

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// The places a caller may put its Keybridge key (SPEC §7.2), every one of
// which is removed before forwarding: Authorization (Bearer, or a SigV4
// signature), x-api-key, api-key, x-goog-api-key and the key query
// parameter.
const (
	hdrAuthorization = "Authorization"
	hdrXAPIKey       = "X-Api-Key"
	hdrAPIKey        = "Api-Key"
	hdrGoogAPIKey    = "X-Goog-Api-Key"
)

// sigV4Scheme starts the Authorization header of an AWS-signed request.
const sigV4Scheme = "AWS4-HMAC-SHA256 "

// callerToken finds the caller's credential: a bearer-style token, or
// sigv4 when the request is AWS-signed. The first place that holds one
// wins, in the order of SPEC §7.2. An Authorization of "Bearer" and
// nothing else holds none (an SDK whose bearer token is set but empty
// sends it beside the key it has in another place).
func callerToken(r *http.Request, queryKey string) (token string, sigv4 bool) {
	if a := header(r.Header, hdrAuthorization); a != "" {
		if len(a) > len(sigV4Scheme) && strings.EqualFold(a[:len(sigV4Scheme)], sigV4Scheme) {
			return "", true
		}
		const bearer = "Bearer"
		if len(a) >= len(bearer) && strings.EqualFold(a[:len(bearer)], bearer) && (len(a) == len(bearer) || a[len(bearer)] == ' ') {
			a = a[len(bearer):]
		}
		if a = strings.TrimSpace(a); a != "" {
			return a, false
		}
	}
	for _, h := range [...]string{hdrXAPIKey, hdrAPIKey, hdrGoogAPIKey} {
		if v := header(r.Header, h); v != "" {
			return strings.TrimSpace(v), false
		}
	}
	return queryKey, false
}

// splitKeyParam removes every key parameter from a raw query, keeping
// every other byte as sent, and returns the first one's unescaped value.
// A name is read as the provider reads it: "%6Bey" is "key".
func splitKeyParam(raw string) (rest, key string) {
	if !strings.Contains(raw, "key") && !strings.Contains(raw, "%") {
		return raw, ""
	}
	var b strings.Builder
	// kept counts the parts written, empty ones too: a query that starts
	// with "&" keeps it.
	kept := 0
	for part := range strings.SplitSeq(raw, "&") {
		name, v, _ := strings.Cut(part, "=")
		if name != "key" && strings.IndexByte(name, '%') >= 0 {
			name, _ = url.QueryUnescape(name)
		}
		if name == "key" {
			if u, err := url.QueryUnescape(v); err == nil && key == "" {
				key = u
			}
			continue
		}
		if kept > 0 {
			b.WriteByte('&')
		}
		kept++
		b.WriteString(part)
	}
	return b.String(), key
}

// guessStyle picks the error shape for a request refused before its
// provider is known (no valid key, so no org to look the provider up
// in): from where the credential is (a header, or the key query parameter
// of Gemini's REST style) and the path the client's SDK uses.
func guessStyle(r *http.Request, rest, queryKey string) style {
	h := r.Header
	switch {
	case strings.HasPrefix(rest, "/model/"), strings.HasPrefix(header(h, hdrAuthorization), "AWS4-"):
		return keybridge.ProviderBedrock
	case header(h, "Anthropic-Version") != "", header(h, hdrXAPIKey) != "", strings.HasPrefix(rest, "/v1/messages"):
		return keybridge.ProviderAnthropic
	case header(h, hdrGoogAPIKey) != "", queryKey != "", strings.Contains(rest, ":generateContent"), strings.Contains(rest, ":streamGenerateContent"),
		strings.HasPrefix(rest, "/v1beta/"):
		return keybridge.ProviderGoogle
	case header(h, hdrAPIKey) != "":
		return keybridge.ProviderAzureOpenAI
	}
	return keybridge.ProviderOpenAI
}

// header is h.Get for a name already in canonical form: net/http stores
// request headers under canonical names, and Get would canonicalize the
// name again on every call of the hot path.
func header(h http.Header, canonical string) string {
	if v := h[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}
