"""Prometheus collectors: scheduler metrics now; NVML GPU and host collectors next."""
