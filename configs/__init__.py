"""Installed as the package `dfmq_configs` (pyproject.toml) so that its YAML files ship in the wheel."""
