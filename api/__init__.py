"""The fine-tuning service's HTTP API (FastAPI): OpenAI-compatible routes and operator routes."""
