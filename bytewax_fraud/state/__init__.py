"""Per-user state: the byte codec (pure) and the stores that hold it (IO)."""
