"""Tenants: who a token is (its team and role), what it may see and do, and the audit log."""
