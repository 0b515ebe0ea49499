"""Hydra's and OmegaConf's errors, told as the project tells its own: one line
`<field>: <what is allowed>`, instead of a multi-line report with the config search path."""

from __future__ import annotations

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from grokking.runs.config import ConfigError, schema_error

# What composing a config can raise for a bad command line or sweep file.
COMPOSITION_ERRORS = (HydraException, OmegaConfBaseException, ConfigError)


def explain(error: Exception, schema: type) -> str:
    """One line naming the field of `schema` and what it allows, for any of
    COMPOSITION_ERRORS."""
    if isinstance(error, MissingConfigException) and error.options is not None:
        group, _, choice = error.missing_cfg_file.rpartition("/")
        return f"{group}: no option {choice!r}; allowed: {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: not an override; write key=value, +key=value or ~key"
    schema_complaint = error if isinstance(error, OmegaConfBaseException) else error.__cause__
    if isinstance(schema_complaint, OmegaConfBaseException) and schema_complaint.full_key:
        return str(schema_error(schema, schema_complaint))
    return str(error).strip().splitlines()[0]  # Hydra's first line says what went wrong
