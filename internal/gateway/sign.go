package gateway

import (
	"context"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/keybridge/keybridge/internal/keybridge"
)

var signer = v4.NewSigner()

// signV4 signs req for Bedrock with the provider settings' access key.
func signV4(ctx context.Context, set keybridge.ProviderSettings, req *http.Request, payloadHash string, t time.Time) error {
	creds := aws.Credentials{AccessKeyID: set.AccessKey.Reveal(), SecretAccessKey: set.AccessKeySecret.Reveal()}
	return signer.SignHTTP(ctx, creds, req, payloadHash, "bedrock", set.Region, t)
}

// verifySigV4 verifies an AWS-signed request's signature, made with an
// AWS AI key pair, over its buffered body.
func (g *Gateway) verifySigV4(r *http.Request, body *[]byte) (*keybridge.Principal, error) {
	return nil, keybridge.Errorf(keybridge.EUnauthenticated, "SigV4 is not supported yet")
}
