"""Installed as the package `dfmq_demo` (pyproject.toml) so that the demo clip ships in the wheel."""
