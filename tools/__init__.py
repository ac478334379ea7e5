"""Tooling for the lesson site: record snippets (``python -m tools.record``) and inject recordings (mkdocs hook).

Nothing in this package imports torch except the cell runner, which runs in the snippet's own process.
"""
