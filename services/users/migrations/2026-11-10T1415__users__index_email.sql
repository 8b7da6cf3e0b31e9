-- Built without blocking writes: CONCURRENTLY cannot run inside a transaction.
-- migrate:no-transaction
-- migrate:up
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS users_email_key ON users (lower(email));

-- migrate:down
DROP INDEX CONCURRENTLY IF EXISTS users_email_key;
