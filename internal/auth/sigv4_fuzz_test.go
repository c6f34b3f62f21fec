package auth_test

import (
	"context"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/store/storetest"
)

// FuzzVerifySigV4 hands VerifySigV4 a signed request with its signed parts
// (Authorization, X-Amz-Date, the path, the payload hash) replaced by
// arbitrary values. It must never panic, must refuse with unauthenticated
// and nothing else, and must accept only the request as it was signed:
// no fuzzed header forges a signature. Run it with scripts/fuzz.sh
// (docs/testing.md).
func FuzzVerifySigV4(f *testing.F) {
	ctx := context.Background()
	fx := newFixture(f, storetest.SQLite(f))
	ring, s := fx.ringService(f)
	secret, k := fx.newSealedAIKey(f, ring, keybridge.AIAWS)
	signed, hash := signedInvoke(f, k.Key, secret)
	auth, date, path := signed.Header.Get("Authorization"), signed.Header.Get("X-Amz-Date"), signed.URL.Path
	f.Add(auth, date, path, hash)
	f.Add(auth[:len(auth)-1]+"0", date, path, hash)
	f.Add("AWS4-HMAC-SHA256 Credential=/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature="+auth[len(auth)-64:], date, path, hash)
	f.Add("AWS4-HMAC-SHA256 Credential=a/b/c/d/e/f, SignedHeaders=;;;;, Signature=", "20260101T000000Z", "/", "")
	f.Fuzz(func(t *testing.T, a, d, p, h string) {
		r := signed.Clone(ctx)
		r.Header.Set("Authorization", a)
		r.Header.Set("X-Amz-Date", d)
		r.URL.Path, r.URL.RawPath = p, ""
		got, err := s.VerifySigV4(ctx, r, h)
		if err != nil {
			if code := keybridge.ErrorCode(err); code != keybridge.EUnauthenticated {
				t.Fatalf("VerifySigV4 = %v (%s), want unauthenticated", err, code)
			}
			return
		}
		if a != auth || d != date || p != path || h != hash {
			t.Fatalf("VerifySigV4 accepted a request whose signed parts changed: %q %q %q %q", a, d, p, h)
		}
		if got == nil || got.KeyID != k.ID {
			t.Fatalf("VerifySigV4 = %+v, want the principal of key %s", got, k.ID)
		}
	})
}
