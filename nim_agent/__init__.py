"""nim-agent."""
