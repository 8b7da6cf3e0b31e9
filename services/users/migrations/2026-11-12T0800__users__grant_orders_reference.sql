-- orders keeps a foreign key to users.id: the users service grants exactly that, nothing more.
-- migrate:up
GRANT USAGE ON SCHEMA users TO orders_owner;
GRANT SELECT (id), REFERENCES (id) ON users TO orders_owner;

-- migrate:down
REVOKE SELECT (id), REFERENCES (id) ON users FROM orders_owner;
REVOKE USAGE ON SCHEMA users FROM orders_owner;
