-- Lists sorted by a project's name or a member's email sort bytewise
-- (COLLATE "C") as in SQLite, whatever the database's default collation,
-- so both engines list alike (providers' names already do). Equality is
-- bytewise under any deterministic collation, so uniqueness is unchanged.
ALTER TABLE users ALTER COLUMN email TYPE TEXT COLLATE "C";
ALTER TABLE projects ALTER COLUMN name TYPE TEXT COLLATE "C";
