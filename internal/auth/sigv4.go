package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/keybridge/keybridge/internal/apikey"
	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store"
)

// SigV4 (SPEC §7.2): the AWS SDKs and CLI sign each request with an AWS AI
// key pair, access key id = the key's kbk_ key, secret access key = its
// kbs_ secret. Verifying recomputes the signature with the secret, which
// AWS keys keep sealed by the key ring for this.
//
// The signature is recomputed by aws-sdk-go-v2's v4 signer, the same code
// that signs for the Go SDK, over a request rebuilt from exactly what the
// client says it signed: the headers it names, the path bytes it sent,
// its query. The signer signs every header it is given except a few it
// never signs (User-Agent, Expect, Transfer-Encoding, X-Amzn-Trace-Id) and
// adds Content-Length only when positive; a client that signed one of
// those cannot be reproduced, and is refused like any signature that does
// not verify. The AWS SDKs and CLI sign none of them.

// sigV4Cred is what a cached AWS key holds for checking signatures.
type sigV4Cred struct {
	// secret is the opened secret access key; zero for a key made before
	// secrets were sealed.
	secret keybridge.Secret
	// signer derives the signing key from secret once a day per region.
	// Each key has its own: the signer's cache knows a key by its access
	// key id alone.
	signer *v4.Signer
}

// MaxSigV4Skew is how far X-Amz-Date may be from this server's clock.
const MaxSigV4Skew = 5 * time.Minute

const (
	sigV4Algorithm = "AWS4-HMAC-SHA256"
	sigV4Service   = "bedrock"
	amzDateFormat  = "20060102T150405Z"
)

var (
	// errBadSignature is every refusal of a SigV4 request: it does not
	// say what failed, which would help forge one.
	errBadSignature = keybridge.Errorf(keybridge.EUnauthenticated, "the AWS signature does not verify for an AWS AI key of this Keybridge")
	errLegacyAWSKey = keybridge.Errorf(keybridge.EUnauthenticated,
		"this AWS AI key was created before Keybridge kept the secrets SigV4 needs, so it works only as a bearer token: create a new AWS AI key to sign requests with the AWS SDKs and CLI")
)

// signedInTime reports whether a request signed at (X-Amz-Date) may be
// verified now: at most MaxSigV4Skew either way, MaxSigV4Skew itself
// included.
func signedInTime(at, now time.Time) bool {
	skew := now.Sub(at)
	return -MaxSigV4Skew <= skew && skew <= MaxSigV4Skew
}

// sigV4Auth is a parsed Authorization header of SigV4.
type sigV4Auth struct {
	keyID, date, region, service string
	signedHeaders, signature     string
}

// parseSigV4 reads "AWS4-HMAC-SHA256 Credential=<key>/<date>/<region>/
// <service>/aws4_request, SignedHeaders=<a;b>, Signature=<hex>".
func parseSigV4(h string) (sigV4Auth, bool) {
	var a sigV4Auth
	rest, ok := strings.CutPrefix(h, sigV4Algorithm+" ")
	if !ok {
		return a, false
	}
	var cred string
	for rest != "" {
		var part string
		part, rest, _ = strings.Cut(rest, ",")
		part = strings.TrimSpace(part)
		switch {
		case strings.HasPrefix(part, "Credential="):
			cred = part[len("Credential="):]
		case strings.HasPrefix(part, "SignedHeaders="):
			a.signedHeaders = part[len("SignedHeaders="):]
		case strings.HasPrefix(part, "Signature="):
			a.signature = part[len("Signature="):]
		default:
			return a, false
		}
	}
	var term string
	a.keyID, cred, _ = strings.Cut(cred, "/")
	a.date, cred, _ = strings.Cut(cred, "/")
	a.region, cred, _ = strings.Cut(cred, "/")
	a.service, term, _ = strings.Cut(cred, "/")
	ok = term == "aws4_request" && a.keyID != "" && len(a.date) == 8 && a.region != "" &&
		a.signedHeaders != "" && len(a.signature) == 64
	return a, ok
}

// IsSigV4 reports whether r carries a SigV4 Authorization header, which
// VerifySigV4 checks rather than a bearer token.
func IsSigV4(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Authorization"), sigV4Algorithm+" ")
}

// VerifySigV4 returns the principal of the AWS AI key that signed r with
// SigV4, the one VerifyAISecret returns for its secret, or unauthenticated.
// payloadHash is the hex SHA-256 of r's body, which the caller has read;
// the signature must cover it (UNSIGNED-PAYLOAD is refused), and an
// x-amz-content-sha256 header must agree with it. X-Amz-Date must be
// within MaxSigV4Skew of now, and the credential scope's service
// "bedrock". r is not modified.
//
// Every refusal has one message, except for an AWS key made before its
// secret was sealed, whose message asks for a new key.
func (s *Service) VerifySigV4(ctx context.Context, r *http.Request, payloadHash string) (*keybridge.Principal, error) {
	a, ok := parseSigV4(r.Header.Get("Authorization"))
	if !ok || a.service != sigV4Service || s.opts.Ring == nil || !apikey.Valid(a.keyID, apikey.AIKeyPrefix) {
		return nil, errBadSignature
	}
	amzDate := r.Header.Get("X-Amz-Date")
	at, err := time.Parse(amzDateFormat, amzDate)
	if err != nil || amzDate[:8] != a.date {
		return nil, errBadSignature
	}
	if !signedInTime(at, time.Now()) {
		return nil, errBadSignature
	}
	if v := r.Header.Get("X-Amz-Content-Sha256"); v != "" && v != "UNSIGNED-PAYLOAD" && v != payloadHash {
		return nil, errBadSignature
	}
	e, stale, err := s.sigV4Entry(ctx, a.keyID)
	if err != nil {
		return nil, err
	}
	if e == nil || e.p == nil {
		return nil, errBadSignature
	}
	if e.sig.secret.IsZero() {
		return nil, errLegacyAWSKey
	}
	shadow, ok := signedRequest(r, &a)
	if !ok {
		return nil, errBadSignature
	}
	creds := aws.Credentials{AccessKeyID: a.keyID, SecretAccessKey: e.sig.secret.Reveal()}
	if err := e.sig.signer.SignHTTP(ctx, creds, shadow, payloadHash, a.service, a.region, at); err != nil {
		return nil, errBadSignature
	}
	// The signer wrote "AWS4-HMAC-SHA256 Credential=<key>/<scope>,
	// SignedHeaders=<list>, Signature=<hex>"; the credential is the
	// client's by construction, so the list and the signature decide.
	_, got, _ := strings.Cut(shadow.Header.Get("Authorization"), ", SignedHeaders=")
	list, sig, _ := strings.Cut(got, ", Signature=")
	if list != a.signedHeaders || subtle.ConstantTimeCompare([]byte(sig), []byte(a.signature)) != 1 {
		return nil, errBadSignature
	}
	if s.running.Load() && !stale {
		// A use answered from the stale set is not recorded, as for a
		// bearer secret: its entry left the cache.
		s.cache.touch(e, s.clock.Load())
	}
	return e.p, nil
}

// SigV4KeyPrincipal returns the principal of the AWS AI key whose public
// key (kbk_...) is keyID, as VerifySigV4 would for a request it signed,
// or unauthenticated once the key is deleted. It checks no signature: it
// is for re-checking a caller already verified, such as an open WebSocket
// whose upgrade was signed. Like VerifySigV4 it answers from the cache,
// and from the stale set during a database outage.
func (s *Service) SigV4KeyPrincipal(ctx context.Context, keyID string) (*keybridge.Principal, error) {
	if !apikey.Valid(keyID, apikey.AIKeyPrefix) {
		return nil, errBadSignature
	}
	e, _, err := s.sigV4Entry(ctx, keyID)
	if err != nil {
		return nil, err
	}
	if e == nil || e.p == nil {
		return nil, errBadSignature
	}
	return e.p, nil
}

// SigV4KeyID returns the public key (kbk_...) that signed r's SigV4
// Authorization header, or "" when r carries none that parses.
func SigV4KeyID(r *http.Request) string {
	a, ok := parseSigV4(r.Header.Get("Authorization"))
	if !ok {
		return ""
	}
	return a.keyID
}

// signedRequest rebuilds from r what its client signed: method, host, the
// path as sent, the query, and only the headers named as signed. X-Amz-Date
// is left for the signer to set, from the time the caller parsed.
func signedRequest(r *http.Request, a *sigV4Auth) (*http.Request, bool) {
	// RequestURI holds the request line's target as the client sent it:
	// the exact path bytes ('%3A', '%2F' and all) that were signed.
	path := r.RequestURI
	if !strings.HasPrefix(path, "/") {
		path = r.URL.EscapedPath()
	} else if i := strings.IndexByte(path, '?'); i >= 0 {
		path = path[:i]
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	shadow := &http.Request{
		Method: r.Method,
		// The signer takes Opaque "//host/path" as the path verbatim,
		// where Path would be unescaped and escaped again.
		URL:    &url.URL{Scheme: scheme, Host: r.Host, Opaque: "//" + r.Host + path, RawQuery: r.URL.RawQuery},
		Host:   r.Host,
		Header: make(http.Header, strings.Count(a.signedHeaders, ";")+1),
	}
	for list := a.signedHeaders; list != ""; {
		var name string
		name, list, _ = strings.Cut(list, ";")
		switch name {
		case "host", "x-amz-date":
			// The signer adds both itself.
		case "content-length":
			if r.ContentLength <= 0 {
				return nil, false
			}
			shadow.ContentLength = r.ContentLength
		default:
			k, ok := headerKey(r.Header, name)
			if !ok {
				return nil, false
			}
			shadow.Header[k] = r.Header[k]
		}
	}
	return shadow, true
}

// headerKey finds the key of h whose lower case is name, without the
// allocation of canonicalizing name.
func headerKey(h http.Header, name string) (string, bool) {
	for k := range h {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			return k, true
		}
	}
	return "", false
}

// sigV4Entry returns the cache entry of the AI key whose public key is
// keyID, loading it on a miss; nil when the store knows no such live key.
// While the store cannot be reached, a key verified before it went away
// is found in the stale set, as a bearer secret is (docs/scaling.md), and
// stale says so.
func (s *Service) sigV4Entry(ctx context.Context, keyID string) (e *entry, stale bool, err error) {
	h := sha256.Sum256([]byte(keyID))
	i, key := slot(&h)
	sh := &s.cache.shards[i]
	if e := sh.t.Load().find(&h, key); e != nil && e.kind == kindSigV4 && s.clock.Load() < e.fastUntil {
		sh.hits.Add(1)
		return e, false, nil
	}
	now := s.now()
	if e, sh := s.cache.get(&h); e != nil && e.kind == kindSigV4 && now < e.deadline {
		sh.hits.Add(1)
		return e, false, nil
	}
	if s.cache.neg.has(&h, now) {
		return nil, false, nil
	}
	s.misses.Add(1)
	gen := s.cache.gen.Load()
	e, err = s.loadSigV4Key(ctx, h, keyID, now)
	if err != nil {
		if store.Unavailable(err) {
			if e := s.cache.staleEntry(&h, kindSigV4, now); e != nil {
				return e, true, nil
			}
		}
		return nil, false, err
	}
	if e == nil {
		s.cache.neg.add(&h, now+int64(s.opts.NegativeTTL))
		return nil, false, nil
	}
	e.fastUntil = e.deadline - clockSlack
	if e.deadline > now {
		s.cache.put(e, gen)
	}
	return e, false, nil
}

// loadSigV4Key reads an AI key by its public key and opens its secret. It
// returns nil for an unknown or deleted key, and an entry with a nil
// principal for a key that is not an AWS key.
func (s *Service) loadSigV4Key(ctx context.Context, h [32]byte, keyID string, now int64) (*entry, error) {
	k, err := s.store.AIKeyByKey(ctx, keyID)
	if keybridge.IsCode(err, keybridge.ENotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up AI key: %w", err)
	}
	// An AI key has no expiry or rotation grace of its own: like a
	// bearer secret's, its entry may serve from the stale set (hard).
	e := &entry{hash: h, kind: kindSigV4, id: k.ID, deadline: now + int64(s.opts.CacheTTL), hard: math.MaxInt64, sig: &sigV4Cred{}}
	if k.AIType != keybridge.AIAWS || k.DeletedAt != nil {
		return e, nil
	}
	e.p = aiPrincipal(k)
	if len(k.SecretSealed) == 0 {
		return e, nil // made before secrets were sealed: bearer only
	}
	plain, err := s.opts.Ring.Open(k.SecretSealed, keybridge.SealedAIKeySecret.AD(k.ID))
	if err != nil {
		return nil, fmt.Errorf("open the secret of AI key %s: %w", k.ID, err)
	}
	e.sig = &sigV4Cred{secret: keybridge.NewSecret(string(plain)), signer: v4.NewSigner()}
	return e, nil
}
