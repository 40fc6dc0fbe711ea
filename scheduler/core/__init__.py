"""The pure core: job specs, lifecycle, resources, cluster snapshots and admission policy.

Nothing here imports Ray, SQLite, an HTTP library or click, and nothing reads the wall
clock: time comes in as an argument. Decisions are returned as plain values.
"""
