"""Batches of runs from prompt files: parsing, the state (batch.db), local and Ray execution."""
