"""The service's domain, between the ML library (vaccine_core) and its two adapters (api: HTTP, worker:
Celery): the database and its models, the one settings object, the operator's policy, tenants and keys,
and the defense stack a job runs."""
