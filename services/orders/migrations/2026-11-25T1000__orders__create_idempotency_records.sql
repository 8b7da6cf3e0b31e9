-- Idempotency records of POST /orders (Powertools idempotency, Postgres persistence layer in
-- services/shared/idempotency.py). Expired rows are taken over by the next request with the key.
-- migrate:up
CREATE TABLE idempotency_records (
    id                      text PRIMARY KEY,
    status                  text NOT NULL CHECK (status IN ('INPROGRESS', 'COMPLETED')),
    expiration              bigint NOT NULL,
    in_progress_expiration  bigint,
    data                    text,
    validation              text,
    created_at              timestamptz NOT NULL DEFAULT now()
);

-- migrate:down
DROP TABLE idempotency_records;
