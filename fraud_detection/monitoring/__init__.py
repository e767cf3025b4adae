"""Watching a served model: the reference profile saved at training, drift statistics, and the
``monitor`` step that compares windows of scored transactions with them (docs/monitoring.md)."""
