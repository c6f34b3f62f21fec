package sqlstore

// RegisterSealed lets the key ring's tests register a table of their own.
var RegisterSealed = registerSealed

// Subscribers counts the subscriptions in place, so tests know when one
// has joined.
func Subscribers(s *Store) int { return len(s.db.hub.subscribers()) }

// The statements that read or delete raw usage rows, for their query plans.
const (
	UsageRawFrom          = usageRawFrom
	UsageDeleteSQL        = usageDeleteSQL
	UsageBatchesOfHour    = usageBatchesOfHour
	UsageBatchesDeleteSQL = usageBatchesDeleteSQL
)

// PackUsage and UnpackUsage are the encoding of usage_batches' rows.
var (
	PackUsage   = packUsage
	UnpackUsage = unpackUsage
)
