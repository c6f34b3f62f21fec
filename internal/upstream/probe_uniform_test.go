package upstream_test

import (
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/keybridge"
	"github.com/keybridge/keybridge/internal/upstream"
)

// rawServer accepts loopback connections and hands each to serve.
func rawServer(t *testing.T, serve func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serve(c.(*net.TCPConn))
		}
	}()
	return "http://" + ln.Addr().String()
}

// TestProbeErrorsAreUniform probes what a port scan tells apart — a closed
// port, a reset, a service that is not HTTP, one that accepts and says
// nothing, an unknown host, a TLS server with a certificate that is not
// trusted and a clear server spoken to in TLS — and wants one answer for all: not reachable,
// ErrUnreachable, no status and no latency, with the reason kept for the
// log. A provider that answers and rejects the key is still told apart.
func TestProbeErrorsAreUniform(t *testing.T) {
	closed := rawServer(t, func(c *net.TCPConn) { c.Close() })
	// A port that surely refuses: listened on, then closed.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedURL := "http://" + l.Addr().String()
	l.Close()

	reset := rawServer(t, func(c *net.TCPConn) {
		c.SetLinger(0)
		c.Read(make([]byte, 1))
		c.Close()
	})
	ssh := rawServer(t, func(c *net.TCPConn) {
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
		c.Read(make([]byte, 512))
		c.Close()
	})
	silent := rawServer(t, func(c *net.TCPConn) {
		time.Sleep(2 * time.Second)
		c.Close()
	})
	tlsSrv := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0)
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	clear := httptest.NewServer(http.NotFoundHandler())
	defer clear.Close()

	client := upstream.New(upstream.Options{Timeout: 500 * time.Millisecond})
	for name, base := range map[string]string{
		"refused":      refusedURL,
		"reset":        reset,
		"not HTTP":     ssh,
		"silent":       silent,
		"closed":       closed,
		"unknown host": "http://no-such-host.invalid",
		"clear in TLS": strings.Replace(clear.URL, "http://", "https://", 1),
		"untrusted":    tlsSrv.URL,
	} {
		res := client.Probe(context.Background(), upstream.Target{Type: keybridge.ProviderOpenAI, BaseURL: base, APIKey: keybridge.NewSecret(testKey)})
		if res.Reachable || res.Error != upstream.ErrUnreachable || res.StatusCode != 0 || res.LatencyMS != 0 {
			t.Errorf("%s: Probe = reachable %v, error %q, status %d, latency %d; want unreachable, %q, 0, 0",
				name, res.Reachable, res.Error, res.StatusCode, res.LatencyMS, upstream.ErrUnreachable)
		}
		if res.Cause() == nil {
			t.Errorf("%s: Probe has no cause for the log", name)
		}
	}

	unauthorized, _ := fakeProvider(t, func(r *http.Request) (int, string) {
		return http.StatusUnauthorized, `{"error":{"type":"invalid_request_error","code":"invalid_api_key"}}`
	})
	res := client.Probe(context.Background(), upstream.Target{Type: keybridge.ProviderOpenAI, BaseURL: unauthorized.URL, APIKey: keybridge.NewSecret(testKey)})
	if res.StatusCode != 401 || !strings.HasPrefix(res.Error, "unauthorized") {
		t.Errorf("Probe of a provider rejecting the key = %d %q, want 401 unauthorized", res.StatusCode, res.Error)
	}
	ok, _ := fakeProvider(t, func(r *http.Request) (int, string) { return 200, `{"data":[{"id":"m"}]}` })
	if res := client.Probe(context.Background(), upstream.Target{Type: keybridge.ProviderOpenAI, BaseURL: ok.URL, APIKey: keybridge.NewSecret(testKey)}); !res.Reachable || res.Error != "" {
		t.Errorf("Probe of a working provider = %+v, want reachable", res)
	}
}

// TestEgressUnspecifiedIsLoopback dials real loopback listeners through
// every spelling of an address that connects to this host, with loopback
// denied: none gets through, and each answer is the guard's refusal or an
// unknown host. Without the deny, 0.0.0.0 and [::] do reach the listeners,
// so the refusals are the guard's doing.
func TestEgressUnspecifiedIsLoopback(t *testing.T) {
	var hits atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Write([]byte(`{"data":[]}`))
	})
	ln4, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln4.Addr().(*net.TCPAddr).Port
	srv4 := &http.Server{Handler: h}
	go srv4.Serve(ln4)
	defer srv4.Close()
	have6 := false
	if ln6, err := net.Listen("tcp", net.JoinHostPort("::1", strconv.Itoa(port))); err == nil {
		have6 = true
		srv6 := &http.Server{Handler: h}
		go srv6.Serve(ln6)
		defer srv6.Close()
	}

	probe := func(c *upstream.Client, host string) upstream.Result {
		return c.Probe(context.Background(), upstream.Target{Type: keybridge.ProviderOpenAICompatible,
			BaseURL: "http://" + host + ":" + strconv.Itoa(port)})
	}
	open := upstream.New(upstream.Options{Timeout: 2 * time.Second})
	for _, host := range []string{"0.0.0.0", "[::]"} {
		if host == "[::]" && !have6 {
			continue
		}
		before := hits.Load()
		if res := probe(open, host); !res.Reachable || hits.Load() != before+1 {
			t.Fatalf("without a deny, %s = %+v: the test's premise (it reaches loopback) does not hold", host, res)
		}
	}

	for _, deny := range []string{"127.0.0.0/8", "::1/128"} {
		guarded := upstream.New(upstream.Options{Timeout: 2 * time.Second, DenyCIDRs: []netip.Prefix{netip.MustParsePrefix(deny)}})
		before := hits.Load()
		for _, host := range []string{
			"0.0.0.0", "0", "0x0", "0.0", "00.00.00.00", "[::]", "[0:0:0:0:0:0:0:0]", "[::ffff:0.0.0.0]", "[::ffff:0:0]",
			"127.0.0.1", "127.1", "0x7f.1", "2130706433", "0177.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "localhost",
		} {
			res := probe(guarded, host)
			if res.Reachable || !(strings.HasPrefix(res.Error, "egress refused") || res.Error == upstream.ErrUnreachable) {
				t.Errorf("deny %s: %s = %+v, want refused", deny, host, res)
			}
		}
		if n := hits.Load() - before; n != 0 {
			t.Errorf("deny %s: the loopback listeners got %d requests, want 0", deny, n)
		}
	}
}

func TestGuardUnspecified(t *testing.T) {
	g := upstream.NewGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	for _, addr := range []string{"0.0.0.0", "::", "::ffff:0.0.0.0", "127.0.0.1", "::1", "::ffff:127.0.0.1"} {
		if err := g.Check(netip.MustParseAddr(addr)); err == nil {
			t.Errorf("with 127.0.0.0/8 denied, Check(%s) = nil, want refused", addr)
		}
	}
	for _, addr := range []string{"0.0.0.1", "10.0.0.1", "::2"} {
		if err := g.Check(netip.MustParseAddr(addr)); err != nil {
			t.Errorf("with 127.0.0.0/8 denied, Check(%s) = %v, want allowed", addr, err)
		}
	}
	if err := upstream.NewGuard(nil).Check(netip.MustParseAddr("0.0.0.0")); err != nil {
		t.Errorf("with nothing denied, Check(0.0.0.0) = %v, want allowed", err)
	}
}
