"""The migrator Lambda: CloudFormation custom resource events → the migration engine."""
