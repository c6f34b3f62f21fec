package gateway_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

// A SigV4 request signed by hand as the AWS SDKs sign, varied in what it
// says about its payload and scope: only a signature over the body as
// sent, for service bedrock, is let through; anything else is 401 and
// reaches nothing upstream.
func TestSigV4PayloadAndScope(t *testing.T) {
	b := newBrEnv(t, envOptions{})
	body := string(brBody(t))
	sum := sha256.Sum256([]byte(body))
	bodyHash := hex.EncodeToString(sum[:])
	otherSum := sha256.Sum256([]byte(body + " "))
	otherHash := hex.EncodeToString(otherSum[:])

	type signing struct {
		hash    string // the payload hash the signature is over
		header  string // X-Amz-Content-Sha256, if any
		service string
		region  string
		at      time.Duration // the signing time's offset from now
		send    string        // the body sent, if not body
	}
	for _, tc := range []struct {
		name string
		s    signing
		ok   bool
	}{
		{"signed body", signing{hash: bodyHash}, true},
		{"signed body with its hash in X-Amz-Content-Sha256", signing{hash: bodyHash, header: bodyHash}, true},
		{"clock 4 minutes slow", signing{hash: bodyHash, at: -4 * time.Minute}, true},
		{"clock 4 minutes fast", signing{hash: bodyHash, at: 4 * time.Minute}, true},
		{"UNSIGNED-PAYLOAD", signing{hash: "UNSIGNED-PAYLOAD", header: "UNSIGNED-PAYLOAD"}, false},
		{"STREAMING-AWS4-HMAC-SHA256-PAYLOAD", signing{hash: "STREAMING-AWS4-HMAC-SHA256-PAYLOAD", header: "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}, false},
		{"STREAMING-UNSIGNED-PAYLOAD-TRAILER", signing{hash: "STREAMING-UNSIGNED-PAYLOAD-TRAILER", header: "STREAMING-UNSIGNED-PAYLOAD-TRAILER"}, false},
		{"signature over another body", signing{hash: otherHash, header: otherHash}, false},
		{"X-Amz-Content-Sha256 of another body", signing{hash: bodyHash, header: otherHash}, false},
		{"body changed after signing", signing{hash: bodyHash, send: strings.Replace(body, "64", "65", 1)}, false},
		{"service s3", signing{hash: bodyHash, service: "s3"}, false},
		{"service bedrock-runtime", signing{hash: bodyHash, service: "bedrock-runtime"}, false},
		{"clock 5 minutes and 1 second slow", signing{hash: bodyHash, at: -5*time.Minute - time.Second}, false},
		{"clock 6 minutes fast", signing{hash: bodyHash, at: 6 * time.Minute}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			send := body
			if tc.s.send != "" {
				send = tc.s.send
			}
			req, err := http.NewRequest("POST", b.URL+"/gateway/br"+brModelPath+"/invoke", strings.NewReader(send))
			if err != nil {
				t.Fatal(err)
			}
			req.URL.RawPath = "/gateway/br" + brModelPath + "/invoke"
			req.Header.Set("Content-Type", "application/json")
			if tc.s.header != "" {
				req.Header.Set("X-Amz-Content-Sha256", tc.s.header)
			}
			service, region := "bedrock", brRegion
			if tc.s.service != "" {
				service = tc.s.service
			}
			if tc.s.region != "" {
				region = tc.s.region
			}
			creds := aws.Credentials{AccessKeyID: b.awsKey, SecretAccessKey: b.awsSecr}
			if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, tc.s.hash, service, region, time.Now().Add(tc.s.at)); err != nil {
				t.Fatal(err)
			}
			before := len(b.mock.Requests())
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			rb, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			reached := len(b.mock.Requests()) - before
			if tc.ok {
				if resp.StatusCode != 200 || reached != 1 {
					t.Fatalf("= %d %s, %d requests upstream; want 200 and one", resp.StatusCode, rb, reached)
				}
				return
			}
			if resp.StatusCode != 401 || resp.Header.Get("X-Keybridge-Error") != "unauthenticated" || reached != 0 {
				t.Errorf("= %d (%s) %s, %d requests upstream; want 401 unauthenticated and none", resp.StatusCode, resp.Header.Get("X-Keybridge-Error"), rb, reached)
			}
		})
	}
	b.noKeybridgeSecrets(t)
}
