"""Prometheus collectors: the server's scheduler metrics (``scheduler``) and the node
exporter (``node``: GPUs through NVML (``nvml``), the host, and dcsched jobs' processes
(``procs``); ``cli`` is ``dcsched exporter``). ``nvml_fake`` is the NVML stand-in for
machines without a GPU, used by tests and benchmarks only."""
