-- GET /users/{id}/orders answers 404 for a user that does not exist: the orders service may see
-- user ids, and nothing else of the users table.
-- migrate:up
GRANT USAGE ON SCHEMA users TO orders_app;
GRANT SELECT (id) ON users TO orders_app;

-- migrate:down
REVOKE SELECT (id) ON users FROM orders_app;
REVOKE USAGE ON SCHEMA users FROM orders_app;
