package providertest_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/eventstream"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/bedrockruntime"

	"github.com/keybridge/keybridge/internal/providertest"
)

// The SDK closes a request's body as soon as the response is in, while
// net/http may still read it once more to check that nothing is left.
// Holding the request's body write until the response is in makes that
// order certain: through AWSHTTPClient the request is still written whole
// and the stream read to its end, where the SDK's own client has the
// transport close the connection under the stream.
func TestAWSHTTPClientBodyClosedBeforeWriteEnds(t *testing.T) {
	more := make(chan struct{})
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body) // the whole request, then the answer
		w.Header().Set("Content-Type", "application/vnd.amazon.eventstream")
		enc := eventstream.NewEncoder()
		send := func(typ, payload string) {
			var msg eventstream.Message
			msg.Headers.Set(":event-type", eventstream.StringValue(typ))
			msg.Headers.Set(":content-type", eventstream.StringValue("application/json"))
			msg.Headers.Set(":message-type", eventstream.StringValue("event"))
			msg.Payload = []byte(payload)
			_ = enc.Encode(w, msg)
			_ = http.NewResponseController(w).Flush()
		}
		send("messageStart", `{"role":"assistant"}`)
		select {
		case <-more:
		case <-r.Context().Done():
			return
		}
		send("messageStop", `{"stopReason":"end_turn"}`)
	}))
	defer hs.Close()
	var once sync.Once
	moreOnce := func() { once.Do(func() { close(more) }) }
	defer moreOnce()

	held := &heldWrite{release: make(chan struct{})}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	var d net.Dialer
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &heldConn{Conn: c, w: held}, nil
	}
	defer tr.CloseIdleConnections()
	wrote := make(chan error, 1)
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		WroteRequest: func(i httptrace.WroteRequestInfo) { wrote <- i.Err },
	})
	c := bedrockruntime.New(bedrockruntime.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(hs.URL), RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider("AKIA", "secret", ""),
		HTTPClient:  providertest.AWSHTTPClient(&http.Client{Transport: tr}),
	})
	out, err := c.ConverseStream(ctx, &bedrockruntime.ConverseStreamInput{ModelId: aws.String("m")})
	close(held.release)
	if err != nil {
		t.Fatal(err)
	}
	es := out.GetStream()
	defer es.Close()
	if !held.done() {
		t.Fatal("the request's body was not written apart from its headers: nothing was held")
	}
	if err := <-wrote; err != nil {
		t.Errorf("request write: got %v, want none", err)
	}
	moreOnce()
	n := 0
	for range es.Events() {
		n++
	}
	if err := es.Err(); err != nil || n != 2 {
		t.Errorf("stream: got %d events and %v, want 2 and no error", n, err)
	}
}

// heldWrite holds the first write of a request's body (the first write
// that is not the request's headers) until release is closed.
type heldWrite struct {
	release chan struct{}
	mu      sync.Mutex
	held    bool
}

func (h *heldWrite) take() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held {
		return false
	}
	h.held = true
	return true
}

func (h *heldWrite) done() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.held
}

type heldConn struct {
	net.Conn
	w *heldWrite
}

func (c *heldConn) Write(p []byte) (int, error) {
	if bytes.HasPrefix(p, []byte("POST ")) || !c.w.take() {
		return c.Conn.Write(p)
	}
	n, err := c.Conn.Write(p)
	<-c.w.release
	return n, err
}
