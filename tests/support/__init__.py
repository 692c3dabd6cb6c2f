"""Test-only helpers (import as ``support.<module>``: tests/conftest.py puts tests/ on sys.path)."""
