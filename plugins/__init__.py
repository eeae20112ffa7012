"""Built-in recall channels, registered through entry points like any plugin."""
