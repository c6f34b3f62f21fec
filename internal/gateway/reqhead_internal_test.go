package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// sdkHead is a request head as the OpenAI SDK sends it.
const sdkHead = "POST /gateway/oai/chat/completions?x=1 HTTP/1.1\r\n" +
	"Host: 127.0.0.1:8080\r\n" +
	"User-Agent: OpenAI/Go 3.8.1\r\n" +
	"Content-Length: 13\r\n" +
	"Accept: application/json\r\n" +
	"Authorization: Bearer kb_test\r\n" +
	"Content-Type: application/json\r\n" +
	"X-Stainless-Arch: x64\r\n" +
	"X-Stainless-Retry-Count: 0\r\n" +
	"Accept-Encoding: gzip\r\n" +
	"\r\n"

// readBoth reads in as Front does (readRequest over a buffer filled by
// one read) and as http.ReadRequest does, and reports whether the plain
// path took it. It fails t where the two differ in any field, the body
// read to its end, or what is left after it.
func readBoth(t testing.TB, in []byte) (plain bool) {
	t.Helper()
	br1 := bufio.NewReaderSize(bytes.NewReader(in), 4096)
	br1.Peek(1)
	probe := bufio.NewReaderSize(bytes.NewReader(in), 4096)
	probe.Peek(1)
	plain = readPlainRequest(probe) != nil
	got, gerr := readRequest(br1)
	br2 := bufio.NewReader(bytes.NewReader(in))
	want, werr := http.ReadRequest(br2)
	if (gerr == nil) != (werr == nil) {
		t.Fatalf("%q: readRequest error %v, http.ReadRequest error %v (plain path: %v)", in, gerr, werr, plain)
	}
	if werr != nil {
		if gerr.Error() != werr.Error() {
			t.Fatalf("%q: readRequest error %q, http.ReadRequest error %q", in, gerr, werr)
		}
		return plain
	}
	type fields struct {
		Method, Proto, Host, RequestURI string
		ProtoMajor, ProtoMinor          int
		URL                             string
		Header                          http.Header
		ContentLength                   int64
		Close                           bool
		TransferEncoding                []string
		Trailer                         http.Header
		NoBody                          bool
	}
	view := func(r *http.Request) fields {
		return fields{r.Method, r.Proto, r.Host, r.RequestURI, r.ProtoMajor, r.ProtoMinor,
			fmt.Sprintf("%#v", *r.URL), r.Header, r.ContentLength, r.Close, r.TransferEncoding, r.Trailer, r.Body == http.NoBody}
	}
	if g, w := view(got), view(want); !reflect.DeepEqual(g, w) {
		t.Fatalf("%q (plain path: %v):\n got %+v\nwant %+v", in, plain, g, w)
	}
	sameRest(t, in, got.Body, want.Body, br1, br2)
	return plain
}

// sameRest fails t unless two readings of in give the same body, read to
// its end (its error included), and leave the same bytes after it.
func sameRest(t testing.TB, in []byte, got, want io.Reader, gotConn, wantConn *bufio.Reader) {
	t.Helper()
	gb, gberr := io.ReadAll(got)
	wb, wberr := io.ReadAll(want)
	if !bytes.Equal(gb, wb) || !errors.Is(gberr, wberr) && (gberr == nil || wberr == nil || gberr.Error() != wberr.Error()) {
		t.Fatalf("%q: body %q, %v; want %q, %v", in, gb, gberr, wb, wberr)
	}
	gr, _ := io.ReadAll(gotConn)
	wr, _ := io.ReadAll(wantConn)
	if !bytes.Equal(gr, wr) {
		t.Fatalf("%q: left %q after the body, want %q", in, gr, wr)
	}
}

func TestReadRequestPlainHeads(t *testing.T) {
	plain := []string{
		sdkHead + `{"model":"m"}`,
		sdkHead + `{"model":"m"}` + "GET /gateway/x HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /gateway/oai/models HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET / HTTP/1.1\r\n\r\n", // no Host: net/http's server refuses it, ReadRequest does not
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, CLOSE\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: cloſe\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: ,, close ,\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept: b\r\nACCEPT: c\r\n\r\n",
		"GET /a HTTP/1.1\r\nhost: h\r\ncOnTeNt-tYpE: x\r\nx-a-b-c: 1\r\n-x-: 2\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nX: \t v \t \r\nY:\r\nZ:   \r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nX: caf\xc3\xa9 \x80\xff\r\n\r\n",
		"GET /a%20b/%2F?q=%zz&key=v HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n1234567",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nshort",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabcdef",
		"PATCH /a HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X-Long: "+strings.Repeat("v", 200)+"\r\n", 10) + "\r\n",
		"M-S.E_A!RCH /a HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nX-Name-Longer-Than-The-Canonical-Buffer-Of-Fifty-Bytes: v\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 999999999999999999\r\n\r\n",
	}
	for _, in := range plain {
		if !readBoth(t, []byte(in)) {
			t.Errorf("%q: left to net/http, want read as plain", in)
		}
	}
	declined := []string{
		"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\nX: a\r\n\r\n",
		"GET /a HTTP/1.1\nHost: h\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3 4\r\n\r\nabc",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\nabc",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nPragma: no-cache\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nTrailer: X\r\n\r\n",
		"GET http://h/a HTTP/1.1\r\nHost: h\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
		"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost : h\r\n\r\n",
		"GET /a HTTP/1.1\r\n: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHo(st: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\x00\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\rX\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\x7f\r\n\r\n",
		"GET /a HTTP/1.1\r\n Host: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\n",
		"\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET  /a HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a  HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a http/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1 \r\nHost: h\r\n\r\n",
		"G(T /a HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a\x80 HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\n" + strings.Repeat("X: v\r\n", maxPlainHeaders+1) + "\r\n",
	}
	for _, in := range declined {
		if readBoth(t, []byte(in)) {
			t.Errorf("%q: read as plain, want left to net/http", in)
		}
	}
}

// Every head one byte away from a plain one (a byte changed to one of
// the bytes parsers trip on, deleted or inserted) reads as net/http
// reads it, by either path.
func TestOneByteFromPlainHeads(t *testing.T) {
	seeds := []string{
		sdkHead + `{"model":"m"}` + "GET /x HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a?b HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 2\r\nX:  v \r\n\r\nhi",
	}
	special := []byte{0, '\t', '\n', '\r', ' ', '"', '%', '(', '+', ',', '-', '/', '0', '9', ':', ';', '?', 'A', 'a', 0x7f, 0x80, 0xc5, 0xff}
	cases, plain := oneByteAway(seeds, special, func(b []byte) bool { return readBoth(t, b) })
	t.Logf("%d heads, %d of them read as plain", cases, plain)
}

// oneByteAway calls read on every input one byte away from a seed: a
// byte changed to one of special, one of special inserted, a byte
// deleted. It counts the inputs, and those read reports true for.
func oneByteAway(seeds []string, special []byte, read func([]byte) bool) (cases, plain int) {
	check := func(b []byte) {
		cases++
		if read(b) {
			plain++
		}
	}
	for _, s := range seeds {
		for i := range len(s) {
			for _, c := range special {
				b := []byte(s)
				b[i] = c
				check(b)
				check([]byte(s[:i] + string([]byte{c}) + s[i:]))
			}
			check([]byte(s[:i] + s[i+1:]))
		}
	}
	return cases, plain
}

func FuzzReadRequestHead(f *testing.F) {
	f.Add([]byte(sdkHead + `{"model":"m"}`))
	f.Add([]byte("GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		readBoth(t, in)
	})
}

func BenchmarkReadRequestHead(b *testing.B) {
	benchHeadReaders(b, []byte(sdkHead+`{"model":"m"}`),
		func(br *bufio.Reader) (io.Reader, error) {
			req, err := readRequest(br)
			if err != nil {
				return nil, err
			}
			return req.Body, nil
		},
		func(br *bufio.Reader) (io.Reader, error) {
			req, err := http.ReadRequest(br)
			if err != nil {
				return nil, err
			}
			return req.Body, nil
		})
}

// benchHeadReaders runs sub-benchmarks plain and net-http: each reads in,
// filled into a buffer by one read as Front and the pool do, and its
// body to the end.
func benchHeadReaders(b *testing.B, in []byte, plain, netHTTP func(*bufio.Reader) (io.Reader, error)) {
	for _, bc := range []struct {
		name string
		read func(*bufio.Reader) (io.Reader, error)
	}{{"plain", plain}, {"net-http", netHTTP}} {
		b.Run(bc.name, func(b *testing.B) {
			r := bytes.NewReader(in)
			br := bufio.NewReaderSize(r, 4096)
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(in)
				br.Reset(r)
				br.Peek(1)
				body, err := bc.read(br)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, body)
			}
		})
	}
}

// plainRequestURI is url.ParseRequestURI wherever it answers: targets
// from the bytes a path or query is made of, the escaping ones included.
func TestPlainRequestURIMatchesParse(t *testing.T) {
	parts := []string{"/", "/", "a", "Z", "0", "-", "_", ".", "~", "$", "&", "+", ",", ":", ";", "=", "@",
		"?", "?", "#", "%", "%2F", "%zz", "!", "'", "(", ")", "*", "[", "]", "\"", "<", "{", "|", "\\", "^", "`", "é"}
	targets := []string{"/", "/v1/chat/completions", "/a?", "/a??", "/a?b=c&d", "//x", "/a:b/c", "/models/gemini:generateContent?key=k"}
	r := rand.New(rand.NewPCG(5, 6))
	for range 100_000 {
		b := "/"
		for range r.IntN(10) {
			b += parts[r.IntN(len(parts))]
		}
		targets = append(targets, b)
	}
	fast := 0
	for _, target := range targets {
		got := plainRequestURI(target)
		if got == nil {
			continue
		}
		fast++
		want, err := url.ParseRequestURI(target)
		if err != nil || *got != *want {
			t.Fatalf("plainRequestURI(%q) = %#v; ParseRequestURI: %#v, %v", target, got, want, err)
		}
	}
	if fast < 10_000 {
		t.Errorf("only %d targets took the plain path: the test reaches too little", fast)
	}
}

// A Connection header names a field as net/http reads it: comma lists
// over any number of lines, blanks and tabs around each name, ASCII case
// folded and nothing else ("\u212a", the Kelvin sign, is no "K").
func TestNamedIn(t *testing.T) {
	for _, c := range []struct {
		lines []string
		name  string
		want  bool
	}{
		{[]string{"keep-alive, X-Trace"}, "X-Trace", true},
		{[]string{"close", " \tx-trace\t "}, "X-Trace", true},
		{[]string{"X-Tracer"}, "X-Trace", false},
		{[]string{"\u212aeep-Alive"}, "Keep-Alive", false},
		{[]string{",,"}, "X-Trace", false},
		{nil, "X-Trace", false},
	} {
		if got := namedIn(c.lines, c.name); got != c.want {
			t.Errorf("namedIn(%q, %q) = %v, want %v", c.lines, c.name, got, c.want)
		}
	}
}
