package providertest

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// bedrockService is the signing name of the Bedrock runtime: requests are
// signed for "bedrock", not "bedrock-runtime".
const bedrockService = "bedrock"

// sigV4Auth is what an Authorization: AWS4-HMAC-SHA256 header holds.
type sigV4Auth struct {
	accessKey, date, region, service string
	signedHeaders                    []string
	signature                        string
}

// parseSigV4 reads an AWS4-HMAC-SHA256 Authorization header; ok is false
// for any other scheme or a malformed one.
func parseSigV4(h string) (a sigV4Auth, ok bool) {
	rest, found := strings.CutPrefix(h, "AWS4-HMAC-SHA256 ")
	if !found {
		return a, false
	}
	for part := range strings.SplitSeq(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "Credential":
			f := strings.Split(v, "/")
			if len(f) != 5 || f[4] != "aws4_request" {
				return a, false
			}
			a.accessKey, a.date, a.region, a.service = f[0], f[1], f[2], f[3]
		case "SignedHeaders":
			a.signedHeaders = strings.Split(v, ";")
		case "Signature":
			a.signature = v
		}
	}
	return a, a.accessKey != "" && a.signature != "" && len(a.signedHeaders) > 0
}

// sigV4Key is the access key id a request was signed with, "" when it was
// not signed.
func sigV4Key(r *http.Request) string {
	a, ok := parseSigV4(r.Header.Get("Authorization"))
	if !ok {
		return ""
	}
	return a.accessKey
}

// awsError is one of AWS's refusals: the x-amzn-ErrorType code and the
// message of its JSON body.
type awsError struct {
	status  int
	code    string
	message string
}

var (
	errMissingToken = &awsError{http.StatusForbidden, "MissingAuthenticationTokenException", "Missing Authentication Token"}
	errBadToken     = &awsError{http.StatusForbidden, "UnrecognizedClientException", "The security token included in the request is invalid."}
	errBadSignature = &awsError{http.StatusForbidden, "InvalidSignatureException",
		"The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details."}
)

// verifySigV4 checks r's SigV4 signature the way AWS does: it signs again,
// with aws-sdk-go-v2's signer, the request as it arrived (its raw path bytes,
// the headers the client said it signed, the body's hash) and compares.
// It returns nil when the signature holds.
func verifySigV4(r *http.Request, body []byte, region, accessKey, secretKey string, now time.Time) *awsError {
	a, ok := parseSigV4(r.Header.Get("Authorization"))
	if !ok {
		return &awsError{http.StatusBadRequest, "IncompleteSignatureException",
			"Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters."}
	}
	if a.accessKey != accessKey {
		return errBadToken
	}
	if a.service != bedrockService {
		return &awsError{http.StatusForbidden, "InvalidSignatureException",
			"Credential should be scoped to correct service: '" + bedrockService + "'. "}
	}
	if a.region != region {
		return &awsError{http.StatusForbidden, "InvalidSignatureException",
			"Credential should be scoped to a valid region. "}
	}
	amzDate := r.Header.Get("X-Amz-Date")
	signed, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil || signed.Format("20060102") != a.date {
		return errBadSignature
	}
	if d := now.Sub(signed); d > 5*time.Minute || d < -5*time.Minute {
		return &awsError{http.StatusForbidden, "InvalidSignatureException",
			"Signature expired: " + amzDate + " is now earlier than " +
				now.Add(-5*time.Minute).UTC().Format("20060102T150405Z") + " (" +
				now.UTC().Format("20060102T150405Z") + " - 5 min.)"}
	}

	sum := sha256.Sum256(body)
	payloadHash := hex.EncodeToString(sum[:])
	if h := r.Header.Get("X-Amz-Content-Sha256"); h != "" && h != payloadHash {
		return &awsError{http.StatusBadRequest, "XAmzContentSHA256Mismatch",
			"The provided 'x-amz-content-sha256' header does not match what was computed."}
	}

	// The copy holds exactly the signed headers; the signer adds host and
	// content-length itself, from Host and ContentLength.
	rawPath, rawQuery, _ := strings.Cut(r.RequestURI, "?")
	cp := &http.Request{
		Method: r.Method,
		Host:   r.Host,
		URL:    &url.URL{Scheme: "http", Host: r.Host, Opaque: "//" + r.Host + rawPath, RawQuery: rawQuery},
		Header: http.Header{},
	}
	for _, h := range a.signedHeaders {
		switch h {
		case "host":
		case "content-length":
			cp.ContentLength = int64(len(body))
		default:
			if v := r.Header.Values(h); len(v) > 0 {
				cp.Header[http.CanonicalHeaderKey(h)] = v
			}
		}
	}
	creds := aws.Credentials{AccessKeyID: accessKey, SecretAccessKey: secretKey}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, cp, payloadHash, bedrockService, region, signed); err != nil {
		return errBadSignature
	}
	want, ok := parseSigV4(cp.Header.Get("Authorization"))
	if !ok || !hmac.Equal([]byte(want.signature), []byte(a.signature)) {
		return errBadSignature
	}
	return nil
}
