"""Lab tools: measurement aids for developers, not shipped in the wheel (``redis_compare``: Lua A/B)."""
