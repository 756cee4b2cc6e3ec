"""Storage: the one source of truth. `base` says what the domain needs; `sql` provides it."""
