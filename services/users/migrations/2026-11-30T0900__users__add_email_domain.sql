-- Users are grouped by their email's domain. New rows get it from the handler (this release's
-- code writes it); the rows from before are filled outside the deploy by the backfill
-- users.fill_email_domain, and the contract revisions after it make the column required.
-- migrate:up
ALTER TABLE users ADD COLUMN email_domain text;

-- migrate:down
ALTER TABLE users DROP COLUMN email_domain;
