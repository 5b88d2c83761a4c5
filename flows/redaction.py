"""Mask every configured API key in every log record, whoever logs it.

Prefect has no log redaction of its own (research/prefect.md §7): its engine logs exception
reprs on every retry and failure, and ships log lines to the server, where they are stored and
shown in the UI. Adapters keep keys out of messages already (flows.errors.redact); this filter
is the second line: a key that reaches a log record anyway, in the message, its arguments or
its traceback, is replaced by `***` before any handler formats or sends it.

A filter on a *logger* only sees records logged to that very logger, not ones propagating from
its children, so `install` puts it on every *handler* (root's, Prefect's console and API
handlers, pytest's capture handlers) as well as on Prefect's run loggers.
"""

from __future__ import annotations

import logging
import os

from flows.errors import redact, register_secret

_RUN_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")


class RedactingFilter(logging.Filter):
    """Rewrites a record in place when it carries a registered secret; never drops one."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format is the handler's problem, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or self._formatter.formatException(record.exc_info)
            clean = redact(text)
            if clean != text:
                record.exc_text = clean  # Formatter.format uses exc_text when it is set
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


FILTER = RedactingFilter()


def register_env_keys() -> None:
    """Every provider's key variable that is set (not only the providers a run uses)."""
    from providers.registry import get_provider_class, provider_names

    for name in provider_names():
        try:
            env = get_provider_class(name).key_env
        except (KeyError, ImportError, AttributeError):
            continue
        if env:
            register_secret(os.environ.get(env))


def _loggers() -> list[logging.Logger]:
    found = [logging.getLogger()]
    found += [lg for lg in logging.Logger.manager.loggerDict.values()
              if isinstance(lg, logging.Logger)]
    return found


def install() -> None:
    """Register the environment's keys and put the filter on every handler there is now.

    Idempotent; call it when a run starts (after logging is configured). Secrets registered
    later (Secret blocks) are masked too: the filter reads the registry on every record."""
    register_env_keys()
    for logger in _loggers():
        for handler in logger.handlers:
            if FILTER not in handler.filters:
                handler.addFilter(FILTER)
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if FILTER not in logger.filters:
            logger.addFilter(FILTER)


__all__ = ["FILTER", "RedactingFilter", "install", "register_env_keys"]
