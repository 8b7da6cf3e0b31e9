-- Every user has an email domain from now on: the live code writes it, and the backfill has
-- filled the older rows (the planner holds this revision until the backfill has finished on
-- the database). NOT VALID: the constraint binds new writes at once, without scanning the table
-- under this lock; the next revision validates the rows under a weaker lock.
-- phase: contract
-- requires-backfill: users.fill_email_domain
-- migrate:up
ALTER TABLE users ADD CONSTRAINT users_email_domain_present
    CHECK (email_domain IS NOT NULL) NOT VALID;

-- migrate:down
ALTER TABLE users DROP CONSTRAINT users_email_domain_present;
