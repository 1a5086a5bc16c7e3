"""Fake hardware for tests: probe snapshots named after real cases (see scenarios.py)."""
