"""Run configuration: the one registry of options (:mod:`robustkit.config.options`), TOML run
files read with line-precise errors and written back as the effective configuration
(:mod:`robustkit.config.files`, :mod:`robustkit.config.resolve`), and the library settings built
from them (:mod:`robustkit.config.build`)."""

from robustkit.config.options import COMMANDS, CONFIG_COMMANDS, FLAG_ALIASES, KEY_ALIASES, OPTIONS, Option, command_options
from robustkit.config.resolve import CONFIG_FILE, MissingOption, Settings, resolve, write_effective

__all__ = ["COMMANDS", "CONFIG_COMMANDS", "CONFIG_FILE", "FLAG_ALIASES", "KEY_ALIASES", "MissingOption", "OPTIONS",
           "Option", "Settings", "command_options", "resolve", "write_effective"]
