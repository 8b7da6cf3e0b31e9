"""Authoring and verification tools built on the engine: `authoring` (new-service, revision),
`check` (upgrade/downgrade round trips), `graph` (the revision graph drawn), `plan_script`
(plans without a database, and as SQL), `progress` (a terminal progress bar) and
`pytest_plugin` (the `svcmig_check` fixture)."""
