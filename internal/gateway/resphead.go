package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
)

// readPlainResponse reads a provider's answer head from what br has
// buffered, as http.ReadResponse does for req, when it is plain: an
// HTTP/1.1 status of 200–599 but 204 and 304, to a request other than
// HEAD, with plain header lines (fieldLines.read) and a body of one
// Content-Length or chunked. Anything else (interim answers, no length,
// other versions or codings) returns nil having consumed nothing, for
// http.ReadResponse to read. resphead_internal_test.go compares the two.
func readPlainResponse(br *bufio.Reader, req *http.Request) *http.Response {
	if req.Method == http.MethodHead {
		return nil
	}
	head, line, ok := bufferedHead(br)
	// "HTTP/1.1 " DIGIT DIGIT DIGIT [ SP reason ]
	const proto = "HTTP/1.1 "
	if !ok || len(line) < len(proto)+3 || string(line[:len(proto)]) != proto {
		return nil
	}
	code := 0
	for _, c := range line[len(proto) : len(proto)+3] {
		if c < '0' || c > '9' {
			return nil
		}
		code = code*10 + int(c-'0')
	}
	if code < 200 || code > 599 || code == http.StatusNoContent || code == http.StatusNotModified ||
		len(line) > len(proto)+3 && line[len(proto)+3] != ' ' || !validText(line[len(proto)+3:]) {
		return nil
	}
	var f fieldLines
	if !f.read(head, len(line)+2) || f.lengths > 1 {
		return nil
	}
	resp := &http.Response{
		Status:     f.s[len(proto):len(line)],
		StatusCode: code,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Request:    req,
		// As net/http reads an answer: the connection's end is in
		// Close, and Connection goes.
		Close: f.close,
	}
	drop := ""
	if f.close {
		drop = "Connection"
	}
	switch {
	case f.codings == 1 && f.lengths == 0 && f.coding == "chunked":
		// net/http moves the coding to TransferEncoding.
		resp.Header = f.header("Transfer-Encoding", drop)
		resp.ContentLength = -1
		resp.TransferEncoding = []string{"chunked"}
		resp.Body = &chunkedBody{br: br, cr: httputil.NewChunkedReader(br)}
	case f.codings == 0 && f.lengths == 1:
		n, ok := parseLength(f.length)
		if !ok {
			return nil
		}
		resp.Header = f.header(drop, "")
		resp.ContentLength = n
		resp.Body = http.NoBody
		if n > 0 {
			resp.Body = &lengthBody{r: br, n: n}
		}
	default:
		return nil
	}
	br.Discard(len(head) + 2)
	return resp
}

// chunkedBody is a chunked response body, as net/http reads one: the
// chunks, then the trailer section after the last, so that the
// connection is at the next answer when the body ends. Trailer fields
// are read and dropped: the gateway does not pass them on.
type chunkedBody struct {
	br   *bufio.Reader
	cr   io.Reader
	done bool
	err  error
}

// net/http's errors for a trailer section that ends early, or does not
// end within the connection's buffer.
var (
	errTrailerEOF  = errors.New("http: unexpected EOF reading trailer")
	errLongTrailer = errors.New("http: suspiciously long trailer after chunked body")
)

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, b.err
	}
	n, err := b.cr.Read(p)
	if err == io.EOF {
		b.done, b.err = true, io.EOF
		if terr := b.readTrailer(); terr != nil {
			b.err = terr
		}
		return n, b.err
	}
	if err != nil {
		b.done, b.err = true, err
	}
	return n, err
}

// readTrailer reads the trailer section, as net/http's body does.
func (b *chunkedBody) readTrailer() error {
	buf, err := b.br.Peek(2)
	if bytes.Equal(buf, []byte("\r\n")) {
		b.br.Discard(2)
		return nil
	}
	if len(buf) < 2 {
		return errTrailerEOF
	}
	if err != nil {
		return err
	}
	if !upcomingDoubleCRLF(b.br) {
		return errLongTrailer
	}
	if _, err := textproto.NewReader(b.br).ReadMIMEHeader(); err != nil {
		if err == io.EOF {
			return errTrailerEOF
		}
		return err
	}
	return nil
}

// upcomingDoubleCRLF reports whether br's buffer, filled up to its size,
// holds the end of a header section.
func upcomingDoubleCRLF(br *bufio.Reader) bool {
	for peekSize := 4; ; peekSize++ {
		buf, err := br.Peek(peekSize)
		if bytes.HasSuffix(buf, crlfcrlf) {
			return true
		}
		if err != nil {
			return false
		}
	}
}

func (b *chunkedBody) Close() error { return nil }
