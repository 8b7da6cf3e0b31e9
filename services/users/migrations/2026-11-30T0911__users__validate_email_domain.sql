-- Checks the existing rows (SHARE UPDATE EXCLUSIVE: reads and writes go on meanwhile).
-- phase: contract
-- migrate:up
ALTER TABLE users VALIDATE CONSTRAINT users_email_domain_present;

-- migrate:down
ALTER TABLE users DROP CONSTRAINT users_email_domain_present;
ALTER TABLE users ADD CONSTRAINT users_email_domain_present
    CHECK (email_domain IS NOT NULL) NOT VALID;
