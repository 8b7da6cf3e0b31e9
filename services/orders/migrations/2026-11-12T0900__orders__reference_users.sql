-- Needs the grant from the users service, hence the declared dependency.
-- depends-on: users_202611120800
-- migrate:up
ALTER TABLE orders
    ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES users.users (id) NOT VALID;

-- migrate:down
ALTER TABLE orders DROP CONSTRAINT orders_user_id_fkey;
