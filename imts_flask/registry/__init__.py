"""The registry of model versions: a job's weights under a name and a version number, with aliases."""
