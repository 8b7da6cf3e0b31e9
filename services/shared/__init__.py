"""Code shared by every service, kept to one small package: the database pool and its
credentials (`db`), idempotency stored in Postgres (`idempotency`), the observability seam
(`observability`), HTTP errors, limits and the resolver (`http`), and API Gateway HTTP API v2
events for local runs (`events`)."""
