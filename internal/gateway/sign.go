package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// verifySigV4 verifies an AWS-signed request's signature, made with an
// AWS AI key pair, over its buffered body.
func (g *Gateway) verifySigV4(ctx context.Context, r *http.Request, body *[]byte) (*keybridge.Principal, error) {
	sum := sha256.Sum256(*body)
	return g.opts.Auth.VerifySigV4(ctx, r, hex.EncodeToString(sum[:]))
}
