package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/keybridge/keybridge/internal/keybridge"
)

// Credential is what authenticates Keybridge to a provider: an upstream
// key, or for bedrock the provider settings' access key pair and region.
// The probe and the gateway both set credentials through it, so a provider
// is called one way wherever the call comes from.
type Credential struct {
	Type     keybridge.ProviderType
	Key      keybridge.Secret
	Settings keybridge.ProviderSettings
}

// SetHeader sets the credential the provider's way on h (see Header). An
// empty key sets nothing (an openai-compatible server on the local network
// may need none). For bedrock it does nothing: bedrock requests are
// signed, by SignBedrock, once everything else about them is final.
//
// It replaces the header's values rather than adding to them, so a value
// left over from the caller cannot travel beside it.
func (c Credential) SetHeader(h http.Header) {
	if name, value := c.Header(); name != "" {
		h[name] = []string{value}
	}
}

// Header returns the header that carries the credential, in canonical
// form, and its value: Authorization: Bearer for openai and
// openai-compatible, x-api-key for anthropic, api-key for azure-openai,
// x-goog-api-key for google. It returns "" for bedrock and for an empty key.
func (c Credential) Header() (name, value string) {
	name, prefix, key := c.HeaderParts()
	return name, prefix + key
}

// HeaderParts is Header with the value in two parts, a scheme prefix
// ("Bearer " or "") and the key, for a writer that need not join them.
func (c Credential) HeaderParts() (name, prefix, key string) {
	key = c.Key.Reveal()
	if key == "" {
		return "", "", ""
	}
	switch c.Type {
	case keybridge.ProviderOpenAI, keybridge.ProviderOpenAICompatible:
		return "Authorization", "Bearer ", key
	case keybridge.ProviderAnthropic:
		return "X-Api-Key", "", key
	case keybridge.ProviderAzureOpenAI:
		return "Api-Key", "", key
	case keybridge.ProviderGoogle:
		return "X-Goog-Api-Key", "", key
	}
	return "", "", ""
}

// BedrockService is the SigV4 signing name of Bedrock's runtime and
// control plane alike.
const BedrockService = "bedrock"

// Errors of SignBedrock; they are safe to show.
var (
	errBedrockRegion = errors.New("bedrock providers need settings.region")
	errBedrockKeys   = errors.New("bedrock providers authenticate with settings.access_key and settings.access_key_secret; neither may be empty")
	errBedrockPath   = errors.New("the request path is not a valid escaped path")
)

// SignBedrock signs req with SigV4 (service "bedrock", the settings' region
// and access key) over payloadHash, the hex SHA-256 of the body, at t. It
// sets Authorization and X-Amz-Date, and removes X-Amz-Security-Token: the
// settings hold a long-term key pair, so a token there could only be a
// caller's.
//
// req.URL.RawPath, when set, must hold the exact path bytes to send (model
// IDs hold ':', ARNs '%2F'); Path is made to agree with it, so that the
// signature and the request line use those bytes. The signature covers the
// path escaped once more, which is what AWS checks for every service but
// S3 (aws-sdk-go-v2's signer does that escaping). Every header in
// req.Header when it is called is signed, except those the signer never
// signs (User-Agent, Expect, Transfer-Encoding, X-Amzn-Trace-Id), so
// headers must be final before it is called. The query is rewritten in its
// canonical order, which means the same to AWS.
func (c Credential) SignBedrock(ctx context.Context, req *http.Request, payloadHash string, t time.Time) error {
	s := &c.Settings
	if s.Region == "" {
		return errBedrockRegion
	}
	ak, sk := s.AccessKey.Reveal(), s.AccessKeySecret.Reveal()
	if ak == "" || sk == "" {
		return errBedrockKeys
	}
	if err := keepRawPath(req); err != nil {
		return err
	}
	delete(req.Header, "X-Amz-Security-Token")
	creds := aws.Credentials{AccessKeyID: ak, SecretAccessKey: sk}
	return signerFor(ak, sk).SignHTTP(ctx, creds, req, payloadHash, BedrockService, s.Region, t)
}

// keepRawPath makes req.URL.EscapedPath return RawPath, which the signer
// and the transport both send: url.URL ignores a RawPath that does not
// decode to Path.
func keepRawPath(req *http.Request) error {
	u := req.URL
	if u.RawPath == "" || u.EscapedPath() == u.RawPath {
		return nil
	}
	p, err := url.PathUnescape(u.RawPath)
	if err != nil {
		return errBedrockPath
	}
	u.Path = p
	if u.EscapedPath() != u.RawPath {
		return errBedrockPath
	}
	return nil
}

// The v4 signer caches the key it derives for a day, one per region and
// service, and recognises it by the access key ID alone: a shared signer
// would keep signing with a secret that was corrected under the same ID,
// and signers shared by many key pairs would derive anew on every switch.
// So each key pair gets a signer of its own. The map is bounded; past
// maxSigners it starts over, which costs each pair one derivation.
const maxSigners = 1024

type signerKey struct{ accessKey, secret string }

var signers = struct {
	mu sync.Mutex
	m  map[signerKey]*v4.Signer
}{m: map[signerKey]*v4.Signer{}}

func signerFor(accessKey, secret string) *v4.Signer {
	k := signerKey{accessKey, secret}
	signers.mu.Lock()
	defer signers.mu.Unlock()
	if s := signers.m[k]; s != nil {
		return s
	}
	if len(signers.m) >= maxSigners {
		clear(signers.m)
	}
	s := v4.NewSigner()
	signers.m[k] = s
	return s
}
