package keybridge_test

import (
	"encoding/json"
	"errors"
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

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		l     keybridge.Limits
		field string // "": valid
	}{
		{"none", keybridge.Limits{}, ""},
		{"every limit", keybridge.Limits{RateLimitRPM: 1, RateLimitTPM: 2, TokenBudget: 3, BudgetPeriod: keybridge.BudgetDay}, ""},
		{"negative rpm", keybridge.Limits{RateLimitRPM: -1}, "rate_limit_rpm"},
		{"negative tpm", keybridge.Limits{RateLimitTPM: -1}, "rate_limit_tpm"},
		{"negative budget", keybridge.Limits{TokenBudget: -1, BudgetPeriod: keybridge.BudgetDay}, "token_budget"},
		{"a budget without a period", keybridge.Limits{TokenBudget: 3}, "budget_period"},
		{"a period without a budget", keybridge.Limits{BudgetPeriod: keybridge.BudgetMonth}, "budget_period"},
		{"an unknown period", keybridge.Limits{TokenBudget: 3, BudgetPeriod: "week"}, "budget_period"},
	} {
		v := keybridge.Validation{}
		tc.l.Validate(v)
		err := v.Err()
		if tc.field == "" {
			if err != nil {
				t.Errorf("%s: Validate(%+v) = %v, want nil", tc.name, tc.l, err)
			}
			continue
		}
		var e *keybridge.Error
		if !errors.As(err, &e) || e.Code != keybridge.EInvalid || e.Fields[tc.field] == "" {
			t.Errorf("%s: Validate(%+v) = %v, want invalid_argument naming %s", tc.name, tc.l, err, tc.field)
		} else if len(e.Fields) != 1 {
			t.Errorf("%s: Validate(%+v) names %v, want only %s", tc.name, tc.l, e.Fields, tc.field)
		}
	}
}
