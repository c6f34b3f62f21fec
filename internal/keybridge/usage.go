package keybridge

import "time"

// Usage is one gateway request, as recorded for accounting (SPEC §7).
type Usage struct {
	ID                string
	Time              time.Time
	OrgID             string
	ProjectID         string
	UserID            string
	APIKeyID          string
	AIKeyID           string
	ProviderID        string
	ProviderKeyID     string
	Model             string
	Status            int
	Stream            bool
	LatencyMS         float64
	UpstreamLatencyMS float64
	InputTokens       int64
	OutputTokens      int64
	CacheReadTokens   int64
	CacheWriteTokens  int64
	Failovers         int
}

// UsageGroupBy is a dimension usage can be aggregated by.
type UsageGroupBy string

// The group-by dimensions of SPEC §7.
const (
	GroupByProvider UsageGroupBy = "provider"
	GroupByModel    UsageGroupBy = "model"
	GroupByUser     UsageGroupBy = "user"
	GroupByProject  UsageGroupBy = "project"
	GroupByAPIKey   UsageGroupBy = "api_key"
)

// UsageQuery asks for usage of one org in [Since, Until), grouped.
type UsageQuery struct {
	OrgID   string
	GroupBy UsageGroupBy
	Since   time.Time
	Until   time.Time
}

// UsageGroup is one row of a usage aggregate.
type UsageGroup struct {
	Key              string `json:"key"`
	Requests         int64  `json:"requests"`
	Errors           int64  `json:"errors"`
	InputTokens      int64  `json:"input_tokens"`
	OutputTokens     int64  `json:"output_tokens"`
	CacheReadTokens  int64  `json:"cache_read_tokens"`
	CacheWriteTokens int64  `json:"cache_write_tokens"`
}
