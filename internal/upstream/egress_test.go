package upstream_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybridge/keybridge/internal/upstream"
)

func TestGuardCheck(t *testing.T) {
	g := upstream.NewGuard([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")})
	for _, c := range []struct {
		addr       string
		denied     bool
		configured bool
	}{
		{"169.254.169.254", true, false},
		{"169.254.170.2", true, false},
		{"169.254.0.1", true, false},
		{"::ffff:169.254.169.254", true, false},
		{"fe80::1", true, false},
		{"fe80::1%eth0", true, false},
		{"febf::1", true, false},
		{"fd00:ec2::254", true, false},
		{"100.100.100.200", true, false},
		{"64:ff9b::a9fe:a9fe", true, false}, // NAT64 of 169.254.169.254
		{"10.1.2.3", true, true},
		{"::ffff:10.1.2.3", true, true},
		{"2001:db8::1", true, true},
		{"127.0.0.1", false, false},
		{"::1", false, false},
		{"192.168.1.10", false, false},
		{"169.253.255.255", false, false},
		{"169.255.0.0", false, false},
		{"fec0::1", false, false},
		{"64:ff9b::808:808", false, false},
		{"8.8.8.8", false, false},
	} {
		err := g.Check(netip.MustParseAddr(c.addr))
		var e *upstream.EgressError
		if got := errors.As(err, &e); got != c.denied {
			t.Errorf("Check(%s) = %v, want denied %v", c.addr, err, c.denied)
			continue
		}
		if c.denied && e.Configured != c.configured {
			t.Errorf("Check(%s).Configured = %v, want %v", c.addr, e.Configured, c.configured)
		}
	}
}

// fakeDNS answers every A query with ip and every other query with no
// records, on a loopback UDP port, until the test ends.
func fakeDNS(t *testing.T, ip [4]byte) string {
	t.Helper()
	addr, _ := recordingDNS(t, ip)
	return addr
}

// recordingDNS is fakeDNS that also tells which names were asked for.
func recordingDNS(t *testing.T, ip [4]byte) (addr string, asked func() []string) {
	t.Helper()
	var mu sync.Mutex
	var names []string
	asked = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(names)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := buf[:n]
			if len(q) < 12 {
				continue
			}
			// Find the end of the question: labels, then QTYPE and QCLASS.
			i := 12
			for i < len(q) && q[i] != 0 {
				i += int(q[i]) + 1
			}
			if i+5 > len(q) {
				continue
			}
			qtype := binary.BigEndian.Uint16(q[i+1 : i+3])
			var name []string
			for j := 12; j < i; j += int(q[j]) + 1 {
				name = append(name, string(q[j+1:j+1+int(q[j])]))
			}
			mu.Lock()
			if !slices.Contains(names, strings.Join(name, ".")) {
				names = append(names, strings.Join(name, "."))
			}
			mu.Unlock()
			question := q[12 : i+5]
			resp := make([]byte, 12, 64)
			copy(resp, q[:2])                            // ID
			binary.BigEndian.PutUint16(resp[2:], 0x8180) // response, recursion available, NOERROR
			binary.BigEndian.PutUint16(resp[4:], 1)      // QDCOUNT
			resp = append(resp, question...)
			if qtype == 1 { // A
				binary.BigEndian.PutUint16(resp[6:], 1) // ANCOUNT
				resp = append(resp, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
				resp = append(resp, ip[:]...)
			}
			pc.WriteTo(resp, from)
		}
	}()
	return pc.LocalAddr().String(), asked
}

func resolverAt(addr string) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// A hostname that resolves to a metadata address is refused on the
// resolved address: the check cannot be dodged with DNS.
func TestDialerRefusesResolvedLinkLocal(t *testing.T) {
	g := upstream.NewGuard(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	d := g.Dialer(resolverAt(fakeDNS(t, [4]byte{169, 254, 169, 254})))
	conn, err := d.DialContext(ctx, "tcp4", "metadata.rebind.test.:80")
	if err == nil {
		conn.Close()
		t.Fatal("dial of a name resolving to 169.254.169.254 succeeded, want refused")
	}
	var e *upstream.EgressError
	if !errors.As(err, &e) || e.Addr != netip.MustParseAddr("169.254.169.254") {
		t.Fatalf("dial error = %v, want an EgressError for 169.254.169.254", err)
	}

	// The same resolver path to an allowed address connects, so the
	// refusal above is the guard's and not a resolver failure.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	d = g.Dialer(resolverAt(fakeDNS(t, [4]byte{127, 0, 0, 1})))
	conn, err = d.DialContext(ctx, "tcp4", net.JoinHostPort("local.rebind.test.", port))
	if err != nil {
		t.Fatalf("dial of a name resolving to 127.0.0.1 = %v, want a connection", err)
	}
	conn.Close()
}

func TestDialerRefusesLiteralAndConfigured(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx := context.Background()
	// Denying loopback by configuration refuses the listener above.
	g := upstream.NewGuard([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	if _, err := g.Dialer(nil).DialContext(ctx, "tcp", ln.Addr().String()); !isEgress(err) {
		t.Errorf("dial %s with 127.0.0.0/8 denied = %v, want an EgressError", ln.Addr(), err)
	}
	// The guard refuses before connecting, so this sends nothing anywhere.
	if _, err := upstream.NewGuard(nil).Dialer(nil).DialContext(ctx, "tcp", "169.254.169.254:80"); !isEgress(err) {
		t.Errorf("dial 169.254.169.254 = %v, want an EgressError", err)
	}
	if _, err := upstream.NewGuard(nil).Dialer(nil).DialContext(ctx, "tcp", "[fe80::1%1]:80"); !isEgress(err) {
		t.Errorf("dial fe80::1 = %v, want an EgressError", err)
	}
}

func isEgress(err error) bool {
	var e *upstream.EgressError
	return errors.As(err, &e)
}
