"""OpenAI's fine-tuning API over the same store: files are uploaded datasets, fine-tuning jobs are
jobs, fine-tuned models are the names /v1/chat/completions answers (serving/names.py).

mapping.py turns OpenAI's requests into the service's and its records into OpenAI's shapes; service.py
does what /v1/files and /v1/fine_tuning/jobs ask, through the datasets' and jobs' own services, so
a job made through either API is read, stopped and deleted through both, under the same tenants,
quotas and audit. A fine-tuning job's id is its job id; what OpenAI's API has and ours does not
(suffix, metadata, seed, the hyperparameters as asked) is kept beside its record in openai.json.
"""
