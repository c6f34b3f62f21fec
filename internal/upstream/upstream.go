// Package upstream is how Keybridge talks to providers outside the gateway's
// request path: an egress-guarded HTTP client, each provider type's
// model-list probe, and the parsing of provider rate-limit headers.
package upstream

import (
	"net/netip"
	"time"
)

// Options configures a Client.
type Options struct {
	// DenyCIDRs are refused at dial time in addition to link-local and
	// metadata addresses, which are always refused.
	DenyCIDRs []netip.Prefix
	// Timeout bounds one probe (default 10 s).
	Timeout time.Duration
}

// Client calls providers.
type Client struct {
	opts Options
}

// New returns a Client.
func New(opts Options) *Client { return &Client{opts: opts} }
