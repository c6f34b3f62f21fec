package cli

import (
	"io"
	"net"
	"testing"
	"time"
)

// A connection the limiter admits still closes its writing side alone, as
// net/http does before it closes a connection: the client reads the end
// of the answer, not a reset, and the server can still read.
func TestConnLimiterKeepsCloseWrite(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newConnLimiter(ln, 4, 8)
	defer l.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("%T has no CloseWrite", c)
	}
	if _, err := io.WriteString(c, "bye"); err != nil {
		t.Fatal(err)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(client); err != nil || string(b) != "bye" {
		t.Fatalf("client read %q, %v; want bye then EOF", b, err)
	}
	if _, err := io.WriteString(client, "still there"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 11)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still there" {
		t.Fatalf("server read %q, %v after CloseWrite", buf, err)
	}
}
