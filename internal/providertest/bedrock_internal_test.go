package providertest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime/types"
)

// An exception message midway through a stream is how Bedrock fails one,
// and the SDK turns it into the exception's typed error.
func TestEncodeException(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // the whole request, then the answer, as Bedrock does
		enc := eventstream.NewEncoder()
		w.Header().Set("Content-Type", "application/vnd.amazon.eventstream")
		_, _ = w.Write(encodeEvent(enc, "messageStart", map[string]any{"role": "assistant"}))
		_, _ = w.Write(encodeException(enc, "modelStreamErrorException", "the stream broke"))
	}))
	defer hs.Close()
	c := bedrockruntime.New(bedrockruntime.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(hs.URL), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIA", "secret", ""),
		HTTPClient:  AWSHTTPClient(nil),
	})
	out, err := c.ConverseStream(context.Background(), &bedrockruntime.ConverseStreamInput{ModelId: aws.String("m")})
	if err != nil {
		t.Fatal(err)
	}
	es := out.GetStream()
	defer es.Close()
	n := 0
	for range es.Events() {
		n++
	}
	var me *types.ModelStreamErrorException
	if !errors.As(es.Err(), &me) || aws.ToString(me.Message) != "the stream broke" || n != 1 {
		t.Errorf("got %d events and %v, want 1 and a ModelStreamErrorException", n, es.Err())
	}
}
