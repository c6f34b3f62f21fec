package upstream

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// AlwaysDenied are the ranges no outbound connection to a provider may
// reach, whatever the configuration: link-local addresses, where every
// major cloud serves instance metadata and credentials (169.254.169.254,
// 169.254.170.2, fe80::/10), and the metadata addresses outside them.
var AlwaysDenied = []netip.Prefix{
	netip.MustParsePrefix("169.254.0.0/16"),     // IPv4 link-local: AWS, GCP, Azure, OCI, DigitalOcean metadata; ECS task credentials
	netip.MustParsePrefix("fe80::/10"),          // IPv6 link-local
	netip.MustParsePrefix("fd00:ec2::254/128"),  // AWS instance metadata over IPv6
	netip.MustParsePrefix("100.100.100.200/32"), // Alibaba Cloud metadata
}

// nat64 is the well-known NAT64 prefix: an address in it reaches the IPv4
// address in its last 32 bits, which must pass the guard as well.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// EgressError is the error of a connection the guard refused. It names the
// address, never anything of the request.
type EgressError struct {
	Addr   netip.Addr
	Prefix netip.Prefix
	// Configured is true when the prefix came from the configuration
	// rather than AlwaysDenied.
	Configured bool
}

// Error implements error.
func (e *EgressError) Error() string {
	if e.Configured {
		return fmt.Sprintf("egress refused: %s is in the denied range %s", e.Addr, e.Prefix)
	}
	return fmt.Sprintf("egress refused: %s is a link-local or cloud metadata address", e.Addr)
}

// Guard decides which addresses outbound connections to providers may
// reach. It checks the address the dialer is about to connect to, after
// DNS resolution, so a hostname that resolves (or is rebound) to a
// metadata address is refused as surely as the literal address.
type Guard struct {
	deny []netip.Prefix
}

// NewGuard returns a Guard refusing AlwaysDenied and the extra prefixes.
func NewGuard(extra []netip.Prefix) *Guard {
	g := &Guard{}
	for _, p := range extra {
		g.deny = append(g.deny, p.Masked())
	}
	return g
}

// Loopback addresses of each family. A connection to an unspecified
// address (0.0.0.0, ::) reaches this host, through loopback: the guard
// checks it as both. A loopback address of either family is checked as
// both as well, so that denying 127.0.0.0/8 denies this host, not only
// its IPv4 side.
var (
	loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	loopback6 = netip.IPv6Loopback()
)

// Check returns an *EgressError when ip may not be dialled. The error
// names ip as given.
func (g *Guard) Check(ip netip.Addr) error {
	ip = ip.WithZone("").Unmap()
	if nat64.Contains(ip) {
		b := ip.As16()
		if err := g.Check(netip.AddrFrom4([4]byte(b[12:16]))); err != nil {
			e := err.(*EgressError)
			e.Addr = ip
			return e
		}
	}
	if e := g.denied(ip); e != nil {
		return e
	}
	if ip.IsUnspecified() || ip.IsLoopback() {
		for _, as := range []netip.Addr{loopback4, loopback6} {
			if e := g.denied(as); e != nil {
				e.Addr = ip
				return e
			}
		}
	}
	return nil
}

// denied checks ip against the ranges, AlwaysDenied first.
func (g *Guard) denied(ip netip.Addr) *EgressError {
	for _, p := range AlwaysDenied {
		if p.Contains(ip) {
			return &EgressError{Addr: ip, Prefix: p}
		}
	}
	for _, p := range g.deny {
		if p.Contains(ip) {
			return &EgressError{Addr: ip, Prefix: p, Configured: true}
		}
	}
	return nil
}

// Control is a net.Dialer ControlContext function: the dialer calls it
// with the resolved IP address right before each connect, and a non-nil
// error aborts that connection. Addresses it cannot parse are refused.
func (g *Guard) Control(_ context.Context, network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("egress refused: cannot parse dial address %q", address)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("egress refused: dial address %q is not an IP address", address)
	}
	return g.Check(ip)
}

// Dialer returns a net.Dialer whose every connection passes the guard. The
// gateway dials providers with it too, so there is one egress policy.
// resolver may be nil for the system's.
func (g *Guard) Dialer(resolver *net.Resolver) *net.Dialer {
	return &net.Dialer{
		Timeout:        10 * time.Second,
		KeepAlive:      30 * time.Second,
		Resolver:       resolver,
		ControlContext: g.Control,
	}
}

// Transport returns an http.Transport that dials through the guard. It
// ignores HTTP(S)_PROXY on purpose: through a proxy the guard would see
// only the proxy's address, never the provider's.
func (g *Guard) Transport(resolver *net.Resolver) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           g.Dialer(resolver).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
}
