"""Exceptions raised by fastprune."""


class FastpruneError(Exception):
    """Base class of fastprune's own errors."""


class StoreError(FastpruneError):
    """A store file is missing, truncated, corrupted or not a store; the message names the file."""


class ConversionError(FastpruneError):
    """A source could not be converted; the message names the file or sample at fault."""


class CheckpointError(FastpruneError):
    """A checkpoint is unsafe, damaged, or was written by a different run; the message says which."""


class ConfigError(FastpruneError, ValueError):
    """An option does not fit the run: a model spec that cannot be built, stores whose labels or
    image sizes need another option. The message names the option that fixes it."""
