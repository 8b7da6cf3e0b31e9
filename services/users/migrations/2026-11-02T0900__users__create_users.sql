-- The users service's first table.
-- migrate:up
CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL,
    username    text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- migrate:down
DROP TABLE users;
