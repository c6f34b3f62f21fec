-- AWS AI keys are SigV4 credentials too (access key id = key, secret access
-- key = secret), and verifying a signature needs the secret itself, not a
-- hash of it. So an AWS key's secret is also sealed by the key ring, bound
-- to its row (ai_keys.secret_sealed); secret_version is the data key
-- version that sealed it, for rewrap. secret_hash stays for every key, AWS
-- keys included, so that their secret keeps working as a bearer token
-- (AWS_BEARER_TOKEN_BEDROCK).
--
-- AWS keys created before this migration have no sealed secret, and none
-- can be made for them: only the hash was kept. They keep working as bearer
-- tokens; a SigV4 request signed with one is refused with a message asking
-- for a new AWS AI key.
ALTER TABLE ai_keys ADD COLUMN secret_sealed BLOB;
ALTER TABLE ai_keys ADD COLUMN secret_version INTEGER NOT NULL DEFAULT 0;
