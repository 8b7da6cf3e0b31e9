-- Contract: the code stopped reading username in the release that added display_name.
-- phase: contract
-- migrate:up
ALTER TABLE users DROP COLUMN username;

-- migrate:down
ALTER TABLE users ADD COLUMN username text;
