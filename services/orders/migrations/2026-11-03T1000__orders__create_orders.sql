-- The orders service's first table.
-- migrate:up
CREATE TABLE orders (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      bigint NOT NULL,
    total_cents  integer NOT NULL CHECK (total_cents >= 0),
    currency     text NOT NULL DEFAULT 'EUR',
    note         text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- migrate:down
DROP TABLE orders;
