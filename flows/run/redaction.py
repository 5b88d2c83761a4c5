"""Mask every configured API key in every log record, whoever logs it.

Prefect masks only its own API key in logs (prefect/logging/filters.py, ObfuscateApiKeyFilter):
its task engine logs the exception's repr on every retry, and its traceback on the final
failure (prefect/task_engine.py), and its APILogHandler ships log lines to the server
(prefect/logging/handlers.py), where they are stored and shown in the UI. Adapters keep keys
out of messages already (providers.errors.redact); this is the second line: a key that reaches
a log record anyway, in the message, its arguments or its traceback, is replaced by `***`
before any handler formats or sends it.

Two hooks, because each alone has a gap. A log-record factory scrubs every record at birth,
from any logger, and survives `logging.config.dictConfig` (Prefect re-runs it when `prefect`
is first fully imported, replacing every handler). A filter on every handler present at install
time also catches records built without the factory. (A filter on a *logger* would only see
records logged to that very logger, not those propagating from its children.)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from providers.errors import StoryreelError, redact, register_secret

_RUN_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite a record in place when it carries a registered secret."""
    try:
        message = record.getMessage()
    except Exception:  # a broken %-format is the handler's problem, not ours
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[1] is not None:
        text = record.exc_text or _FORMATTER.formatException(record.exc_info)
        clean = redact(text)
        if clean != text:
            record.exc_text = clean  # Formatter.format uses exc_text when it is set
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


_FORMATTER = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Scrubs records in place; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
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
    """Register the environment's keys, hook the record factory, filter every handler.

    Idempotent; call it when a run starts. Secrets registered later (Secret blocks) are masked
    too: both hooks read the registry on every record."""
    register_env_keys()
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_storyreel_redacting", False):
        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return scrub_record(factory(*args, **kwargs))

        redacting_factory._storyreel_redacting = True  # type: ignore[attr-defined]
        logging.setLogRecordFactory(redacting_factory)
    for logger in _loggers():
        for handler in logger.handlers:
            if FILTER not in handler.filters:
                handler.addFilter(FILTER)
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if FILTER not in logger.filters:
            logger.addFilter(FILTER)


def redact_data(value: Any) -> Any:
    """`value` with every string in it (dict keys and values, list items) redacted: for rows
    and documents written to files (cost.csv, run.json) or sent to Prefect (artifacts)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_data(v) for v in value)
    return value


def scrubbed(fn: Any) -> Any:
    """Wrap an async flow function so that an exception carrying a key leaves it masked
    (Prefect copies the text into the flow run's state message)."""
    import functools

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            clean = scrub(exc)
            if clean is exc:
                raise
            raise clean from None

    return wrapper


def scrub(exc: BaseException) -> BaseException:
    """`exc` itself when its text holds no registered secret; otherwise a StoryreelError with
    the masked text, to be raised `from None`. Prefect copies an exception's text into the
    task's state message and events, which no log filter sees."""
    text = f"{type(exc).__name__}: {exc}"
    clean = redact(text)
    return exc if clean == text else StoryreelError(clean)


__all__ = ["FILTER", "RedactingFilter", "install", "redact", "redact_data", "register_env_keys",
           "scrub", "scrub_record", "scrubbed"]
