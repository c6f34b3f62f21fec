package gateway

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// quickDeadlines shortens every read deadline its connections are given
// to 100 ms, so a head that is never finished times out at once.
type quickDeadlines struct{ net.Listener }

func (l quickDeadlines) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	return quickDeadlineConn{c}, err
}

type quickDeadlineConn struct{ net.Conn }

func (c quickDeadlineConn) SetReadDeadline(t time.Time) error {
	if soon := time.Now().Add(100 * time.Millisecond); t.After(soon) {
		t = soon
	}
	return c.Conn.SetReadDeadline(t)
}

// A gateway request head the client does not finish in time ends the
// connection without an answer, as net/http's server ends it; a head
// that cannot be read as HTTP gets 400.
func TestFrontHeadTimeoutEndsQuietly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := (&Gateway{}).Front(quickDeadlines{ln})
	go f.Serve()
	t.Cleanup(func() { f.Shutdown(context.Background()) })
	for _, tc := range []struct{ name, head, want string }{
		{"unfinished", "POST /gateway/oai/chat/completions HTTP/1.1\r\nHost: x\r\n", ""},
		{"malformed", "POST /gateway/oai/chat/completions HTTP/1.1\r\nHost x\r\n\r\n", "HTTP/1.1 400 Bad Request\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.head); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read: %v (the connection was not closed)", err)
			}
			if tc.want == "" && len(got) > 0 || !strings.HasPrefix(string(got), tc.want) {
				t.Errorf("answer %q, want %q", got, tc.want)
			}
		})
	}
}
