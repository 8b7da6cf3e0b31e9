"""The services of this monorepo: one folder per service (handler code + migrations/), and
`shared/`, the little code every service uses. Lambda handler paths look like
`services.users.handler.handler`."""
