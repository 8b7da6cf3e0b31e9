-- Validating takes only a SHARE UPDATE EXCLUSIVE lock: reads and writes go on.
-- migrate:up
ALTER TABLE orders VALIDATE CONSTRAINT orders_user_id_fkey;

-- migrate:down
-- Nothing to undo: a validated constraint stays valid when the previous revision drops it.
SELECT 1;
