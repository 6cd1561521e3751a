"""Builders of test inputs shared by tests and benchmarks (tiny checkpoints in the real file formats)."""
