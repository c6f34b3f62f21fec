package gateway

// UsageChunkFilter exposes the usage-chunk filter to black-box tests.
type UsageChunkFilter struct{ f usageChunkFilter }

func NewUsageChunkFilter() *UsageChunkFilter { return &UsageChunkFilter{} }

func (u *UsageChunkFilter) Filter(p []byte) []byte { return append([]byte(nil), u.f.filter(p)...) }
func (u *UsageChunkFilter) Flush() []byte          { return u.f.flush() }

// FilterInPlace is Filter without copying the result, for benchmarks.
func (u *UsageChunkFilter) FilterInPlace(p []byte) []byte { return u.f.filter(p) }

// InjectUsage is the request side of include_usage, for benchmarks.
func InjectUsage(body []byte) []byte {
	if f := scanReqBody(body); wantsUsageInjected("openai", "/chat/completions", &f) {
		return injectIncludeUsage(body, &f)
	}
	return body
}
