package cli_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestServeSlowBodies is the slow-body attack: 50 clients from one address
// send a login's headers and then its body one byte every 5 s. With a
// body timeout of 1 s and at most 8 connections per address, the server
// holds none of them for long: past the cap they are answered 429 at once
// and closed, and the others get 408 request_timeout once the timeout has
// passed, then are closed. A client from another address gets through
// meanwhile, and one from the same address once the trickling ones are
// gone. (The attack used to hold all 50 connections for as long as the
// clients liked.)
func TestServeSlowBodies(t *testing.T) {
	srv := startServe(t, t.TempDir(), "--api-body-timeout", "1s", "--max-conns-per-ip", "8")
	addr := strings.TrimPrefix(srv.url, "http://")

	const clients = 50
	type outcome struct {
		status int    // 0: closed without an answer
		code   string // the error code of the answer
		err    error
	}
	results := make(chan outcome, clients)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var trickling sync.WaitGroup
	for range clients {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		trickling.Add(1)
		go func() {
			defer trickling.Done()
			body := `{"email":"admin@acme.test","password":"a password that arrives slowly"}`
			_, err := io.WriteString(c, "POST /api/v1/auth/login HTTP/1.1\r\nHost: keybridge\r\nContent-Type: application/json\r\n"+
				"Content-Length: "+itoa(len(body))+"\r\n\r\n")
			for i := 0; err == nil && i < len(body); i++ {
				if _, err = c.Write([]byte{body[i]}); err != nil {
					break
				}
				select {
				case <-time.After(5 * time.Second):
				case <-ctx.Done():
					return
				}
			}
		}()
		go func() {
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				results <- outcome{err: err}
				return
			}
			var e struct{ Error struct{ Code string } }
			json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			// The server must close the connection after answering.
			_, err = io.Copy(io.Discard, c)
			results <- outcome{status: resp.StatusCode, code: e.Error.Code, err: err}
		}()
	}

	// Another address is not held up by them.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	login := func(client *http.Client) (*http.Response, error) {
		return client.Post(srv.url+"/api/v1/auth/login", "application/json",
			strings.NewReader(`{"email":"nobody@acme.test","password":"wrong password"}`))
	}
	resp, err := login(other)
	if err != nil {
		t.Fatalf("a login from 127.0.0.2 while 50 clients trickle: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a login from 127.0.0.2 while 50 clients trickle = %d, want 401", resp.StatusCode)
	}

	// Every trickling connection ends, well before its body could arrive
	// (70 bytes at one per 5 s is almost 6 minutes).
	var timedOut, refused int
	deadline := time.After(45 * time.Second)
	for i := range clients {
		select {
		case o := <-results:
			switch {
			case o.err != nil:
				t.Errorf("client %d: %v (status %d)", i, o.err, o.status)
			case o.status == http.StatusRequestTimeout && o.code == "request_timeout":
				timedOut++
			case o.status == http.StatusTooManyRequests && o.code == "rate_limited":
				refused++
			default:
				t.Errorf("client %d: answered %d %q, want 408 request_timeout or 429 rate_limited", i, o.status, o.code)
			}
		case <-deadline:
			t.Fatalf("after 45 s, %d of %d trickling connections are still held (%d timed out, %d refused)", clients-i, clients, timedOut, refused)
		}
	}
	if timedOut < 1 || timedOut > 8 || timedOut+refused != clients {
		t.Errorf("%d answered 408 and %d 429, want at most 8 (the cap) and the rest 429", timedOut, refused)
	}
	stop()
	trickling.Wait()

	// Over HTTP/2 the deadline is the stream's: a trickled body is 408
	// too, and the connection's other streams are not touched.
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &h2}}
	pr, pw := io.Pipe()
	defer pw.Close()
	go pw.Write([]byte(`{"email":`))
	req, _ := http.NewRequest("POST", srv.url+"/api/v1/auth/login", pr)
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = 70
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := h2c.Do(req)
		if err != nil {
			t.Errorf("HTTP/2 trickled login: %v", err)
			return
		}
		var e struct{ Error struct{ Code string } }
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout || e.Error.Code != "request_timeout" {
			t.Errorf("HTTP/2 trickled login = %s %d %q, want HTTP/2 408 request_timeout", resp.Proto, resp.StatusCode, e.Error.Code)
		}
	}()
	resp, err = h2c.Get(srv.url + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("HTTP/2 GET /healthz beside the trickled login = %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Errorf("an HTTP/2 trickled login is still held after 30 s")
	}

	// And the same address gets through once they are gone.
	var got int
	for try := 0; try < 50; try++ {
		resp, err := login(&http.Client{Transport: &http.Transport{}})
		if err == nil {
			resp.Body.Close()
			if got = resp.StatusCode; got == http.StatusUnauthorized {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != http.StatusUnauthorized {
		t.Errorf("a login from 127.0.0.1 after the trickling clients = %d, want 401", got)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
