package providertest

import (
	"io"
	"net/http"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
)

// AWSHTTPClient is the HTTP client to give an AWS SDK for Go client
// (Options.HTTPClient) that tests point at these mocks or at Keybridge:
// next, or the SDK's default client when next is nil, with one race of the
// SDK's kept away from the connection.
//
// The SDK (smithy-go's ClientHandler, v1.28.9) closes a request's body as
// soon as the HTTP client returns the response, but net/http's transport
// may not be done with the body then: after copying Content-Length bytes it
// reads the body once more, through io.Copy, to check that nothing is left.
// The SDK's body wrapper has a WriteTo that, once the body is closed,
// returns io.EOF, which io.Copy passes on as an error: the transport takes
// it for a failed request write and closes the connection, and the
// response's body then fails with "use of closed network connection". A
// server that answers as soon as it has read the request (the mocks,
// Keybridge's gateway, Bedrock) wins that race whenever the client's write
// goroutine waits for a CPU; a streamed answer, whose later frames are read
// after the close, then ends in that error midway.
//
// The body the transport gets here has no WriteTo, so that last read goes
// through Read, which once closed reports io.EOF: the end of a body all of
// whose bytes were sent. The bytes, headers and transport are the same, and
// a connection the server closes, cuts or resets still fails as before.
// Once a smithy-go release answers WriteTo on a closed body without an
// error, this wrapper can go.
func AWSHTTPClient(next aws.HTTPClient) aws.HTTPClient {
	if next == nil {
		next = awshttp.NewBuildableClient()
	}
	return awsHTTPClient{next}
}

type awsHTTPClient struct{ next aws.HTTPClient }

func (c awsHTTPClient) Do(r *http.Request) (*http.Response, error) {
	if _, ok := r.Body.(io.WriterTo); ok {
		r = r.Clone(r.Context())
		r.Body = readCloser{r.Body}
	}
	return c.next.Do(r)
}

// readCloser is a body with Read and Close only.
type readCloser struct{ io.ReadCloser }
