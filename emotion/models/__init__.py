"""Models that ship with emotion."""
