package gateway

// CloseIdleUpstreams closes the pooled upstream connections, so that a
// test counting goroutines sees those of its upstreams end.
func (g *Gateway) CloseIdleUpstreams() { g.client.closeIdle() }
