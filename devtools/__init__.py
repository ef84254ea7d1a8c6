"""Dev-only helpers (Azurite, local host, demo, benchmarks). Not deployed: see .funcignore."""
