package auth

// ArgonRuns returns how many argon2 computations this process has made.
func ArgonRuns() int64 { return argonRuns.Load() }
