"""Configuration files: YAML in, :class:`ext_authz.settings.Settings` out (see ``load.py``)."""

from .load import load_settings, parse_settings, read_config

__all__ = ["load_settings", "parse_settings", "read_config"]
