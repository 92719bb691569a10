"""Batches of runs from prompt files: parsing, the manifest, local and Ray execution."""
