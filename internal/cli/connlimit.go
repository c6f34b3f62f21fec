package cli

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Default connection caps of the connections net/http serves (the
// management API, the web UI, HTTP/2): per client address and in all.
// Connections the gateway's own server takes (cli's Front) are not
// counted: its clients' pools are theirs to size.
const (
	defaultMaxConnsPerIP = 64
	defaultMaxConns      = 1024
)

// connLimiter is a listener that admits at most perIP connections from one
// client address (an IPv6 client by its /64, which one host commonly
// holds whole) and total in all; 0 leaves either unbounded. A connection
// past a cap is answered at once with an HTTP/1.1 error in the API's
// shape (429 from one address, 503 in all) and closed, so it holds
// nothing. A connection counts until it is closed.
type connLimiter struct {
	net.Listener
	perIP, total int

	mu  sync.Mutex
	n   int
	per map[netip.Addr]int
}

func newConnLimiter(ln net.Listener, perIP, total int) *connLimiter {
	return &connLimiter{Listener: ln, perIP: perIP, total: total, per: map[netip.Addr]int{}}
}

// Accept implements net.Listener.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := clientKey(c.RemoteAddr())
		l.mu.Lock()
		switch {
		case l.perIP > 0 && l.per[key] >= l.perIP:
			l.mu.Unlock()
			refuse(c, "429 Too Many Requests", "rate_limited", "too many connections from this address")
			continue
		case l.total > 0 && l.n >= l.total:
			l.mu.Unlock()
			refuse(c, "503 Service Unavailable", "unavailable", "too many connections")
			continue
		}
		l.n++
		l.per[key]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, release: func() { l.release(key) }}, nil
	}
}

func (l *connLimiter) release(key netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.per[key]--; l.per[key] <= 0 {
		delete(l.per, key)
	}
}

// clientKey is the address a connection is counted under.
func clientKey(a net.Addr) netip.Addr {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	ip := ap.Addr().Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// refuse answers a connection over a cap and closes it. The answer is
// small enough for the socket's buffer, and the write deadline makes sure
// a client that reads nothing cannot stall Accept. The close lingers a
// moment, reading what the client sends: closing on unread bytes would
// reset the connection, and a reset can cost the client the answer.
func refuse(c net.Conn, status, code, msg string) {
	body := `{"error":{"code":"` + code + `","message":"` + msg + `"}}` + "\n"
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := c.Write([]byte("HTTP/1.1 " + status + "\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
	cw, ok := c.(interface{ CloseWrite() error })
	if err != nil || !ok || cw.CloseWrite() != nil {
		c.Close()
		return
	}
	go func() {
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
		c.Close()
	}()
}

// limitedConn gives its place back once, when closed.
type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite shuts the writing side of the connection it wraps, when that
// can (net/http half-closes a connection before closing it, so that the
// client reads the last answer instead of a reset).
func (c *limitedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("the connection cannot close its writing side alone")
}
