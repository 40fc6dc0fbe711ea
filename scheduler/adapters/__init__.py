"""Adapters: Ray, SQLite and HTTP implementations of the ports in dcsched.ports."""
