"""The commands: the CLI and what it calls (pipeline, verify, pack, reports, zoo)."""
