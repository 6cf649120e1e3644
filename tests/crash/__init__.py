"""Crash and race tests: real worker processes counted by a ledger outside stepflow."""
