-- The email domain of every user who signed up before the column existed, in batches of user
-- ids (`svcmig backfill run users.fill_email_domain`; a deploy starts it once the code that
-- writes the column is live). Rows the new code wrote already have it.
UPDATE users SET email_domain = lower(split_part(email, '@', 2))
WHERE id >= :start AND id < :end AND email_domain IS NULL;
