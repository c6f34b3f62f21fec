package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"testing"
)

// openaiHead is a chat completion's answer head as OpenAI sends it.
const openaiHead = "HTTP/1.1 200 OK\r\n" +
	"Date: Wed, 02 Dec 2026 10:00:00 GMT\r\n" +
	"Content-Type: application/json\r\n" +
	"Content-Length: 11\r\n" +
	"Connection: keep-alive\r\n" +
	"openai-organization: org-x\r\n" +
	"openai-processing-ms: 312\r\n" +
	"x-ratelimit-limit-requests: 10000\r\n" +
	"x-ratelimit-remaining-tokens: 29999\r\n" +
	"x-request-id: req_1\r\n" +
	"\r\n"

// sseHead is a streamed answer's head, chunked.
const sseHead = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"

// readBothResponses reads in as the gateway does (readResponse over a
// buffer filled by one read) and as http.ReadResponse does, for method,
// and reports whether the plain path took it. It fails t where the two
// differ in any field, the body read to its end, or what is left.
func readBothResponses(t testing.TB, in []byte, method string) (plain bool) {
	t.Helper()
	req := &http.Request{Method: method}
	probe := bufio.NewReaderSize(bytes.NewReader(in), 4096)
	probe.Peek(1)
	plain = readPlainResponse(probe, req) != nil
	br1 := bufio.NewReaderSize(bytes.NewReader(in), 4096)
	br1.Peek(1)
	got, gerr := readResponse(br1, method)
	br2 := bufio.NewReader(bytes.NewReader(in))
	var want *http.Response
	var werr error
	for {
		want, werr = http.ReadResponse(br2, req)
		if werr == nil && want.StatusCode < 100 {
			want, werr = nil, errors.New("invalid status code") // as readResponse refuses it
		}
		if werr != nil || want.StatusCode >= 200 || want.StatusCode == 101 {
			break
		}
	}
	if (gerr == nil) != (werr == nil) || gerr != nil && gerr.Error() != werr.Error() {
		t.Fatalf("%q: readResponse error %v, http.ReadResponse error %v (plain path: %v)", in, gerr, werr, plain)
	}
	if werr != nil {
		return plain
	}
	type fields struct {
		Status, Proto          string
		StatusCode             int
		ProtoMajor, ProtoMinor int
		Header                 http.Header
		ContentLength          int64
		TransferEncoding       []string
		Close, Uncompressed    bool
		NoBody                 bool
	}
	view := func(r *http.Response) fields {
		return fields{r.Status, r.Proto, r.StatusCode, r.ProtoMajor, r.ProtoMinor, r.Header, r.ContentLength,
			r.TransferEncoding, r.Close, r.Uncompressed, r.Body == http.NoBody}
	}
	if g, w := view(got), view(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("%q (plain path: %v):\n got %+v\nwant %+v", in, plain, g, w)
	}
	sameRest(t, in, got.Body, want.Body, br1, br2)
	return plain
}

func TestReadResponsePlainHeads(t *testing.T) {
	next := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	plain := []string{
		openaiHead + `{"ok":true}` + next,
		sseHead + "5\r\ndata:\r\n3\r\n\n\n\r\n0\r\n\r\n" + next,
		sseHead + "5\r\ndata:\r\n0\r\nX-Trailer: 1\r\n\r\n" + next,
		sseHead + "5\r\ndata:\r\n0\r\n",           // no trailer section
		sseHead + "5\r\ndat",                      // cut mid-chunk
		sseHead + "zz\r\n",                        // a bad chunk size
		sseHead + "5;ext=1\r\ndata:\r\n0\r\n\r\n", // a chunk extension
		"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\nConnection: close\r\n\r\nnope!",
		"HTTP/1.1 429 \r\nContent-Length: 0\r\nRetry-After: 3\r\n\r\n",
		"HTTP/1.1 500\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive, Close\r\nSet-Cookie: a\r\nset-cookie: b\r\n\r\nx",
		"HTTP/1.1 599 Whatever\tit is\r\nContent-Length: 0\r\n\r\n",
	}
	for _, in := range plain {
		if !readBothResponses(t, []byte(in), "POST") {
			t.Errorf("%q: left to net/http, want read as plain", in)
		}
	}
	declined := []string{
		"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\n\r\nuntil the connection ends",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nPragma: no-cache\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTrailer: X\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX: a\r\n b\r\n\r\nx",
		"HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1  200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 2000 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 20 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 099 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 O\x00K\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 600 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/2 200\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",
	}
	for _, in := range declined {
		if readBothResponses(t, []byte(in), "POST") {
			t.Errorf("%q: read as plain, want left to net/http", in)
		}
	}
	if readBothResponses(t, []byte(openaiHead+`{"ok":true}`), "HEAD") {
		t.Error("an answer to HEAD was read as plain")
	}
}

// Every answer one byte away from a plain one reads as net/http reads it.
func TestOneByteFromPlainResponses(t *testing.T) {
	seeds := []string{
		openaiHead + `{"ok":true}` + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
		sseHead + "5\r\ndata:\r\n3\r\n\n\n\r\n0\r\n\r\n",
	}
	special := []byte{0, '\t', '\n', '\r', ' ', ',', '-', '0', '1', '9', ':', ';', 'A', 'a', 'F', 0x7f, 0x80, 0xff}
	cases, plain := oneByteAway(seeds, special, func(b []byte) bool { return readBothResponses(t, b, "POST") })
	t.Logf("%d answers, %d of them read as plain", cases, plain)
}

func FuzzReadResponseHead(f *testing.F) {
	f.Add([]byte(openaiHead+`{"ok":true}`), false)
	f.Add([]byte(sseHead+"5\r\ndata:\r\n0\r\nX: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"), true)
	f.Fuzz(func(t *testing.T, in []byte, head bool) {
		method := "POST"
		if head {
			method = "HEAD"
		}
		readBothResponses(t, in, method)
	})
}

func BenchmarkReadResponseHead(b *testing.B) {
	req := &http.Request{Method: "POST"}
	benchHeadReaders(b, []byte(openaiHead+`{"ok":true}`),
		func(br *bufio.Reader) (io.Reader, error) {
			resp, err := readResponse(br, "POST")
			if err != nil {
				return nil, err
			}
			return resp.Body, nil
		},
		func(br *bufio.Reader) (io.Reader, error) {
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				return nil, err
			}
			return resp.Body, nil
		})
}
