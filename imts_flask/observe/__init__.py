"""What the monitors and the service read from the engines beside them: GPU figures through NVML,
and the runs they log to MLflow (tracking.py)."""
