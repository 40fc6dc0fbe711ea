"""dcsched: a job scheduler and monitor for teams that share one Ray cluster.

Layers (see docs/architecture.md):
- ``dcsched.core``: pure policy and data types; no Ray, SQLite, HTTP or click.
- ``dcsched.ports``: the protocols the service needs (store, executor, cluster view, clock).
- ``dcsched.service``: the scheduling loop wiring the ports to the core.
- ``dcsched.adapters``: Ray, SQLite and HTTP implementations of the ports.
- ``dcsched.cli``: a thin click client over the HTTP API (never imports ray or torch).
"""

__version__ = "0.1.0"

from dcsched.report import report

__all__ = ["__version__", "report"]
