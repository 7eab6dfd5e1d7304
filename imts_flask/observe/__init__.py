"""Watching the service: Prometheus metrics, GPU figures through NVML, webhooks on job changes."""
