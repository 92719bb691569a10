"""Procedural object families, one module each; `dream3d.procedural.shapes` holds the registry."""
