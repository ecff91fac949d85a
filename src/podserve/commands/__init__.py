"""CLI commands that span several parts (serve, demo)."""
