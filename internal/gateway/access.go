package gateway

import (
	"context"
	"fmt"
	"time"

	"github.com/keybridge/keybridge/internal/auth"
	"github.com/keybridge/keybridge/internal/keybridge"
)

// An open WebSocket tunnel, and a stream as its bytes flow (relay), is
// checked again and again, not only when it began: a key revoked, suspended or expired, a lost gateway:invoke, a
// deleted AI key or membership, a disabled provider or a removed upstream
// credential ends the tunnels it opened within tunnelRecheck plus the
// time the change takes to reach this replica's caches, as it refuses the
// next request (SPEC §3: refused everywhere within one second).

// tunnelRecheck is how often an open tunnel checks its caller's access.
// Each check is a few lookups in memory while the caches are warm.
const tunnelRecheck = 500 * time.Millisecond

// watchAccess checks the tunnel's access every tunnelRecheck until ctx
// ends. On the first refusal it calls cut, which ends the tunnel, and
// returns the refusal; it returns nil when ctx ended first.
func (x *exchange) watchAccess(ctx context.Context, cut func()) *gwError {
	t := time.NewTicker(tunnelRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if refused := x.stillAllowed(ctx); refused != nil && ctx.Err() == nil {
			cut()
			return refused
		}
	}
}

// stillAllowed re-checks what serve checked before forwarding the
// upgrade, from the same caches: the caller's key (a SigV4-signed
// upgrade's through its AI key, since the signature itself was for one
// moment), its gateway:invoke permission and model allowlist, the
// provider, and that the upstream credential the tunnel holds is still
// one serve would use. It returns the refusal a new request would get, or
// nil. A store that cannot be reached refuses nothing: requests keep
// working meanwhile on what was verified before (docs/scaling.md), and
// so does the tunnel.
func (x *exchange) stillAllowed(ctx context.Context) *gwError {
	g, r := x.g, x.r
	var p *keybridge.Principal
	var err error
	if token, sigv4 := callerToken(r, x.queryKey); sigv4 {
		p, err = g.opts.Auth.SigV4KeyPrincipal(ctx, auth.SigV4KeyID(r))
	} else {
		p, err = g.verify(ctx, r, token, false, nil)
	}
	switch {
	case err != nil && keybridge.ErrorCode(err) == keybridge.EInternal:
		return nil
	case err != nil:
		return newError(keybridge.ErrorCode(err), keybridge.ErrorMessage(err))
	}
	if refused := invokeRefusal(p); refused != nil {
		return refused
	}
	rt, err := g.routes.route(ctx, p.OrgID, x.name)
	switch {
	case err != nil:
		return nil
	case rt == nil || rt.provider.ID != x.rt.provider.ID:
		return providerNotFound(x.name)
	}
	if refused := typeRefusal(p, rt); refused != nil {
		return refused
	}
	if refused := x.modelRefusal(p.AllowedModels); refused != nil {
		return refused
	}
	keys, gerr := x.candidates(ctx, p, rt)
	switch {
	case gerr != nil && gerr.code == keybridge.EInternal:
		return nil
	case gerr != nil:
		return gerr
	}
	for _, k := range keys {
		if k.id == x.upstreamKey && k.credential == x.credentialID {
			return nil
		}
	}
	return newError(keybridge.EUnavailable, fmt.Sprintf("the upstream credential of provider %q this WebSocket used was removed or disabled", rt.provider.Name))
}
