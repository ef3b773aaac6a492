"""The one base of every error a user can cause, so the CLI prints those as one line and lets bugs keep
their tracebacks.

Each package defines its own subclasses where the concept lives (`ConfigError` in gptjax.config,
`TaskError` in eval.registry, ...); they also derive from the matching built-in (ValueError,
FileNotFoundError, ...) so callers that catch those keep working.
"""

from __future__ import annotations


class GptjaxError(Exception):
    """Bad input or an unusable state on disk; the message names the offending value, file or key."""


class ConfigError(GptjaxError, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


class InputNotFoundError(GptjaxError, FileNotFoundError):
    """A file or directory the user named (or a default data path) does not exist; the message says where
    it was looked for and how to point gptjax elsewhere."""


__all__ = ["ConfigError", "GptjaxError", "InputNotFoundError"]
