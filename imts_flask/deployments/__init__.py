"""Deployments: a trained model served by LLaMA Factory's OpenAI-compatible API server, queued, run,
lost and settled like a job (a run of the job store, in deployments/<id>/)."""
