"""The access-control door: the policy over decisions, its action worker and audit log."""
