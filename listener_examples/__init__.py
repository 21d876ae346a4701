"""Example workflows shipped with listener (used by `listener demo` and the README)."""
