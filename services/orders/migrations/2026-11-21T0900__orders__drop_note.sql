-- Contract: free-text notes moved to the order events log; the code no longer writes them.
-- phase: contract
-- migrate:up
ALTER TABLE orders DROP COLUMN note;

-- migrate:down
ALTER TABLE orders ADD COLUMN note text;
