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

// UsageBucket is the width of one point of a usage time series.
type UsageBucket string

// The bucket widths of SPEC §7.7; the zero value asks for no series.
const (
	BucketNone UsageBucket = ""
	BucketHour UsageBucket = "hour"
	BucketDay  UsageBucket = "day"
)

// UsageQuery asks for usage of one org in [Since, Until), grouped, and
// with Bucket set also as a time series per group.
type UsageQuery struct {
	OrgID   string
	GroupBy UsageGroupBy
	Since   time.Time
	Until   time.Time
	Bucket  UsageBucket
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
	Failovers        int64  `json:"failovers"`
	// LatencyMSAvg is the mean of the requests' latency_ms.
	LatencyMSAvg float64 `json:"latency_ms_avg"`
	// Series is the group's usage per bucket, oldest first, when the
	// query asked for one; buckets without requests are left out.
	Series []UsagePoint `json:"series,omitempty"`
}

// UsagePoint is one bucket of a group's time series: the group's usage
// from Start (the bucket's start, on the hour or the UTC day) for one
// bucket width, clipped to the query's window.
type UsagePoint struct {
	Start            time.Time `json:"start"`
	Requests         int64     `json:"requests"`
	Errors           int64     `json:"errors"`
	InputTokens      int64     `json:"input_tokens"`
	OutputTokens     int64     `json:"output_tokens"`
	CacheReadTokens  int64     `json:"cache_read_tokens"`
	CacheWriteTokens int64     `json:"cache_write_tokens"`
	Failovers        int64     `json:"failovers"`
	LatencyMSAvg     float64   `json:"latency_ms_avg"`
}
