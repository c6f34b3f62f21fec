-- A budget period means nothing without a budget, and the API no longer
-- accepts one (400); keys stored with one before show none from now on.
UPDATE api_keys SET budget_period = '' WHERE token_budget = 0 AND budget_period <> '';
UPDATE ai_keys SET budget_period = '' WHERE token_budget = 0 AND budget_period <> '';
