"""The CDK app (Python) that deploys svcmig services: see docs/deploy.md."""
