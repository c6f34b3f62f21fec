package keybridge_test

import (
	"encoding/json"
	"testing"

	"github.com/keybridge/keybridge/internal/keybridge"
)

// TestLimitsJSON checks that limits are all shown, none included: 0 for a
// limit, null for no budget period.
func TestLimitsJSON(t *testing.T) {
	for _, tc := range []struct {
		l    keybridge.Limits
		want string
	}{
		{keybridge.Limits{}, `{"rate_limit_rpm":0,"rate_limit_tpm":0,"token_budget":0,"budget_period":null}`},
		{keybridge.Limits{RateLimitRPM: 1, RateLimitTPM: 2, TokenBudget: 3, BudgetPeriod: keybridge.BudgetMonth},
			`{"rate_limit_rpm":1,"rate_limit_tpm":2,"token_budget":3,"budget_period":"month"}`},
	} {
		got, err := json.Marshal(tc.l)
		if err != nil || string(got) != tc.want {
			t.Errorf("Marshal(%+v) = %s, %v; want %s", tc.l, got, err, tc.want)
		}
		var back keybridge.Limits
		if err := json.Unmarshal(got, &back); err != nil || back != tc.l {
			t.Errorf("Unmarshal(%s) = %+v, %v; want %+v", got, back, err, tc.l)
		}
	}
}
