"""Workflow formats (API and UI), validation and dependency order. Knows nothing of torch."""
