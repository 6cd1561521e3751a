"""Execution: the executor, its content-keyed cache, events, progress and interrupt."""
