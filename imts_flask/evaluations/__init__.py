"""Evaluations: a trained job's weights, and with `baseline` its base model, judged on a dataset.

An evaluation is a run like a job: its own record under the job's directory
(jobs/<job>/evaluations/<eval>/state.json), queued for the same slots by the same scheduler,
watched by the same liveness checks, run by a detached monitor that calls llamafactory-cli once
per phase (record.py says which). plan.py writes the phases' configs, runner.py runs them,
results.py reads their figures and samples, service.py is what the API calls.
"""
