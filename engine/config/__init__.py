"""The configuration schema: server, channels, plans and experiments (TOML)."""
