"""One set of `Store` tests, run on `MemoryStore`, SQLite and PostgreSQL alike.

This is what keeps the fake honest: domain tests on `taskyard.testing.MemoryStore` mean
something only while it does what `SqlStore` does. Every method of the `Store` protocol has a
test here: each test says which methods it covers (`support.covers`), the `store` fixture
checks that it calls them, and test_coverage.py fails when a method has none. What needs
several stores on one database (claims racing under the dispatch lock, lease elections,
notices) is in ../test_cluster_store.py.
"""
