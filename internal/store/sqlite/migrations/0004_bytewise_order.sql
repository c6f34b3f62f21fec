-- Lists sorted by a project's name or a member's email sort bytewise
-- (COLLATE "C") as in SQLite, whatever the database's default collation,
-- so both engines list alike. SQLite's BINARY collation already sorts
-- bytewise: nothing changes here; the number mirrors PostgreSQL's 0004.
SELECT 1;
