package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// AnthropicVersion is the anthropic-version header Keybridge sends.
const AnthropicVersion = "2023-06-01"

// maxListBody caps how much of a model list is read: OpenRouter-sized
// catalogues fit, a provider streaming garbage does not hold memory.
const maxListBody = 8 << 20

// Probe calls t's model-list endpoint, which costs no tokens, and reports
// whether it answered, its rate limits and its models. It never returns an
// error: every failure is a Result with Reachable false and a message safe
// to show. It takes at most the client's timeout.
func (c *Client) Probe(ctx context.Context, t Target) Result {
	res := Result{Models: []string{}, CheckedAt: time.Now().UTC().Truncate(time.Millisecond)}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	req, err := newProbeRequest(ctx, t)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		res.Error, res.cause = describeDialError(err), err
		return res
	}
	defer resp.Body.Close()
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, maxListBody))
	res.LatencyMS = time.Since(start).Milliseconds()
	res.StatusCode = resp.StatusCode
	res.RateLimits = ParseRateLimits(resp.Header, time.Now())
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		res.Error = describeStatus(resp, body, t.APIKey)
		return res
	}
	res.Reachable = true
	if readErr != nil {
		res.Error, res.cause = "the model list was cut short", readErr
		return res
	}
	models, err := parseModels(t.Type, body)
	if err != nil {
		res.Error = "the provider answered, but not with a model list Keybridge could read"
		return res
	}
	res.Models = models
	return res
}

// newProbeRequest builds the model-list request of t's type, with its
// credentials set the provider's way. Its errors are safe to show.
func newProbeRequest(ctx context.Context, t Target) (*http.Request, error) {
	base := t.BaseURL
	if base == "" {
		base = keybridge.DefaultBaseURL(t.Type, t.Settings.Region)
	}
	if base == "" {
		return nil, errors.New("base_url is required for " + string(t.Type) + " providers")
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("base_url must be an absolute http or https URL")
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	q := u.Query()
	cred := Credential{Type: t.Type, Key: keybridge.NewSecret(strings.TrimSpace(t.APIKey.Reveal())), Settings: t.Settings}
	header := http.Header{}
	switch t.Type {
	case keybridge.ProviderOpenAI, keybridge.ProviderOpenAICompatible:
		u.Path += "/models"
	case keybridge.ProviderAnthropic:
		u.Path = withVersion(u.Path, "/v1") + "/models"
		q.Set("limit", "1000")
		header.Set("anthropic-version", AnthropicVersion)
	case keybridge.ProviderGoogle:
		if !strings.HasSuffix(u.Path, "/v1") {
			u.Path = withVersion(u.Path, "/v1beta")
		}
		u.Path += "/models"
		q.Set("pageSize", "1000")
	case keybridge.ProviderAzureOpenAI:
		// https://RESOURCE.openai.azure.com[/openai[/v1]]: the v1 API
		// lists models without an api-version; the dated API under
		// /openai needs one.
		switch {
		case strings.HasSuffix(u.Path, "/openai/v1"):
			u.Path += "/models"
		default:
			u.Path = withVersion(u.Path, "/openai") + "/models"
			v := t.Settings.APIVersion
			if v == "" {
				v = keybridge.DefaultAzureAPIVersion
			}
			q.Set("api-version", v)
		}
	case keybridge.ProviderBedrock:
		return newBedrockRequest(ctx, cred, u)
	default:
		return nil, fmt.Errorf("unknown provider type %q", t.Type)
	}
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, errors.New("base_url must be an absolute http or https URL")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	cred.SetHeader(req.Header)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "keybridge")
	return req, nil
}

// withVersion appends version to path unless path already ends with it,
// so both https://api.anthropic.com and https://proxy.example/v1 work.
func withVersion(path, version string) string {
	if strings.HasSuffix(path, version) {
		return path
	}
	return path + version
}

// emptyPayloadHash is the SHA-256 of an empty body, for SigV4.
var emptyPayloadHash = func() string { h := sha256.Sum256(nil); return hex.EncodeToString(h[:]) }()

// newBedrockRequest builds ListFoundationModels, signed with SigV4. The
// default base URL is the runtime endpoint (bedrock-runtime.REGION); the
// model list lives on the control plane (bedrock.REGION), so the probe
// goes there. A custom base URL (a proxy) gets /foundation-models appended.
func newBedrockRequest(ctx context.Context, cred Credential, u *url.URL) (*http.Request, error) {
	region := cred.Settings.Region
	if region == "" {
		return nil, errBedrockRegion
	}
	if cred.Settings.AccessKey.IsZero() || cred.Settings.AccessKeySecret.IsZero() {
		return nil, errBedrockKeys
	}
	if u.Host == "bedrock-runtime."+region+".amazonaws.com" && u.Path == "" {
		u.Host = "bedrock." + region + ".amazonaws.com"
	}
	u.Path += "/foundation-models"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, errors.New("base_url must be an absolute http or https URL")
	}
	req.Header.Set("Accept", "application/json")
	if err := cred.SignBedrock(ctx, req, emptyPayloadHash, time.Now().UTC()); err != nil {
		return nil, errors.New("could not sign the bedrock request")
	}
	return req, nil
}

// parseModels reads the model IDs out of a type's model list.
func parseModels(t keybridge.ProviderType, body []byte) ([]string, error) {
	models := []string{}
	switch t {
	case keybridge.ProviderGoogle:
		var v struct {
			Models []struct {
				Name string `json:"name"`
			} `json:"models"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return nil, err
		}
		for _, m := range v.Models {
			models = append(models, strings.TrimPrefix(m.Name, "models/"))
		}
	case keybridge.ProviderBedrock:
		var v struct {
			ModelSummaries []struct {
				ModelID string `json:"modelId"`
			} `json:"modelSummaries"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return nil, err
		}
		for _, m := range v.ModelSummaries {
			models = append(models, m.ModelID)
		}
	default:
		var v struct {
			Data []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			return nil, err
		}
		for _, m := range v.Data {
			models = append(models, m.ID)
		}
	}
	return models, nil
}

// ErrUnreachable is the one message of a probe whose provider could not be
// reached, whatever the reason: a closed port, a reset, a timeout, an
// unknown host, a TLS failure or a server that does not speak HTTP all
// read the same, so the test endpoint tells an admin nothing about what
// listens where that the answer of a real provider would not. The reason
// is in Result.Cause, for the server's log.
const ErrUnreachable = "upstream unreachable: check base_url, and that the provider is up"

// describeDialError turns a transport failure into words safe to show:
// the egress guard's refusal (which says only what the configuration
// does), a cancellation, or ErrUnreachable.
func describeDialError(err error) string {
	var egress *EgressError
	switch {
	case errors.As(err, &egress):
		return egress.Error()
	case errors.Is(err, context.Canceled):
		return "the request was canceled"
	}
	return ErrUnreachable
}

// errorIdentifier is the shape of the error codes providers return
// (invalid_api_key, authentication_error, PERMISSION_DENIED,
// UnrecognizedClientException): worth showing, too short and too regular
// to carry a key.
var errorIdentifier = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.]{2,63}$`)

// describeStatus explains a non-2xx answer. The provider's own message is
// left out: some echo part of the key back ("Incorrect API key provided:
// sk-abc***xyz"). Only its error code is kept.
func describeStatus(resp *http.Response, body []byte, key keybridge.Secret) string {
	code := resp.StatusCode
	var what string
	switch {
	case code == http.StatusUnauthorized:
		what = "unauthorized: the provider rejected the key"
	case code == http.StatusForbidden:
		what = "forbidden: the key is not allowed to list models"
	case code == http.StatusNotFound:
		what = "not found: check base_url"
	case code == http.StatusTooManyRequests:
		what = "rate limited by the provider"
	case code >= 300 && code < 400:
		what = "the provider redirected (not followed): check base_url"
	case code >= 500:
		what = "the provider failed"
	default:
		what = "unexpected answer from the provider"
	}
	msg := fmt.Sprintf("%s (HTTP %d", what, code)
	if id := providerErrorCode(resp.Header, body); id != "" && !strings.Contains(key.Reveal(), id) {
		msg += ", " + id
	}
	return msg + ")"
}

// providerErrorCode finds the error identifier in the error shapes of
// OpenAI ({"error":{"code","type"}}), Anthropic ({"error":{"type"}}),
// Gemini ({"error":{"status"}}) and AWS (x-amzn-ErrorType).
func providerErrorCode(h http.Header, body []byte) string {
	candidates := []string{strings.SplitN(h.Get("x-amzn-ErrorType"), ":", 2)[0]}
	var v struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &v) == nil && len(v.Error) > 0 {
		var e struct {
			Code   any    `json:"code"`
			Type   string `json:"type"`
			Status string `json:"status"`
		}
		if json.Unmarshal(v.Error, &e) == nil {
			if s, ok := e.Code.(string); ok {
				candidates = append(candidates, s)
			}
			candidates = append(candidates, e.Type, e.Status)
		}
	}
	for _, c := range candidates {
		if errorIdentifier.MatchString(c) {
			return c
		}
	}
	return ""
}
