"""Logging and tracing configuration.

Headrace logs with the standard `logging` module under the ``headrace``
logger tree. `setup_logging` sends those logs to standard error, as text or
as one JSON object per line (what log collectors want; the runner picks it
with ``HEADRACE_LOG_FORMAT=json``). `setup_tracing` keeps Bytewax's
signature: it sets the log level and, given a `JaegerConfig` or
`OtlpTracingConfig`, exports OpenTelemetry traces over OTLP (install the
extra: ``pip install headrace[otel]``).

>>> tracer = setup_tracing(log_level="INFO")
>>> logging.getLogger("headrace").getEffectiveLevel() == logging.INFO
True
>>> tracer.shutdown()
"""

from __future__ import annotations

import importlib
import json as _json
import logging
import os
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

__all__ = [
    "HeadraceTracer",
    "JaegerConfig",
    "JsonFormatter",
    "OtlpTracingConfig",
    "TracingConfig",
    "setup_logging",
    "setup_tracing",
]

_LOGGER = "headrace"
_LEVELS = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
_OTEL_HINT = "install the OpenTelemetry extra: `pip install headrace[otel]`"

# LogRecord attributes that are not user extras.
_RECORD_FIELDS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class TracingConfig:
    """Base class of tracing backends; pass a subclass to `setup_tracing`.

    >>> isinstance(OtlpTracingConfig("my-flow"), TracingConfig)
    True
    """


def _check_ratio(sampling_ratio: float) -> float:
    if not 0.0 <= sampling_ratio <= 1.0:
        msg = f"sampling_ratio must be between 0.0 and 1.0; got {sampling_ratio!r}"
        raise ValueError(msg)
    return float(sampling_ratio)


class JaegerConfig(TracingConfig):
    """Send traces to Jaeger, which receives OTLP (Jaeger 1.35 and later).

    ``endpoint`` is Jaeger's OTLP gRPC endpoint, ``"host:port"`` or a URL;
    the default is ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``127.0.0.1:4317``.
    ``sampling_ratio`` is the fraction of traces kept (0.0 to 1.0).

    >>> JaegerConfig("wordcount", endpoint="jaeger:4317").endpoint
    'jaeger:4317'
    """

    def __init__(self, service_name: str, endpoint: str | None = None, sampling_ratio: float = 1.0) -> None:
        self.service_name = service_name
        self.endpoint = endpoint
        self.sampling_ratio = _check_ratio(sampling_ratio)


class OtlpTracingConfig(TracingConfig):
    """Send traces to an OpenTelemetry collector over OTLP.

    ``url``: ``grpc://host:4317`` (or Bytewax's ``grpc:://host:4317``) uses
    OTLP/gRPC; ``http://host:4318/v1/traces`` uses OTLP/HTTP. Both
    exporters come with the ``otel`` extra. ``None`` uses
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` or the gRPC exporter's default,
    ``localhost:4317`` (Bytewax's is ``127.0.0.1:4317``). ``sampling_ratio``
    is the fraction of traces kept.

    >>> cfg = OtlpTracingConfig("wordcount", sampling_ratio=0.1)
    >>> cfg.service_name, cfg.url, cfg.sampling_ratio
    ('wordcount', None, 0.1)
    """

    def __init__(self, service_name: str, url: str | None = None, sampling_ratio: float = 1.0) -> None:
        self.service_name = service_name
        self.url = url
        self.sampling_ratio = _check_ratio(sampling_ratio)


class JsonFormatter(logging.Formatter):
    """Format each record as one JSON object on one line.

    Keys: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then
    any ``extra=`` fields (e.g. ``step_id``), and ``exc_info`` for exceptions.

    >>> rec = logging.LogRecord("headrace.worker", logging.INFO, "", 0, "hi %s", ("x",), None)
    >>> rec.step_id = "flow.map"
    >>> out = _json.loads(JsonFormatter().format(rec))
    >>> out["level"], out["logger"], out["message"], out["step_id"]
    ('INFO', 'headrace.worker', 'hi x', 'flow.map')
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line.

        >>> rec = logging.LogRecord("headrace", logging.ERROR, "", 0, "boom", None, None)
        >>> '"level": "ERROR"' in JsonFormatter().format(rec)
        True
        """
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_info"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return _json.dumps(out, default=repr, ensure_ascii=False)


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[str(level).strip().upper()]
    except KeyError:
        msg = f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}"
        raise ValueError(msg) from None


class _LogHandler(logging.StreamHandler[TextIO]):
    """The handler `setup_logging` installs; `remove` undoes the setup."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(sys.stderr)
        self._logger = logger
        self._saved = (logger.level, logger.propagate)

    def emit(self, record: logging.LogRecord) -> None:
        # Resolved per record, so a redirected stderr (tests) is honoured.
        self.stream = sys.stderr
        super().emit(record)

    def remove(self) -> None:
        """Detach from the ``headrace`` logger and restore its level and propagation."""
        if self in self._logger.handlers:
            self._logger.removeHandler(self)
            self._logger.setLevel(self._saved[0])
            self._logger.propagate = self._saved[1]


def setup_logging(level: str | int = "INFO", json: bool = False) -> _LogHandler:
    """Log the ``headrace`` logger tree to standard error at ``level``.

    ``level`` is a name (``"DEBUG"``, ``"INFO"``, ``"WARN"``, ``"ERROR"``...)
    or a `logging` number; ``json=True`` writes one JSON object per line.
    Calling it again replaces the previous setup. The returned handler's
    ``remove()`` undoes it.

    >>> handler = setup_logging("WARN", json=True)
    >>> logging.getLogger("headrace.worker").getEffectiveLevel() == logging.WARNING
    True
    >>> isinstance(handler.formatter, JsonFormatter)
    True
    >>> handler.remove()
    """
    lvl = _parse_level(level)
    logger = logging.getLogger(_LOGGER)
    for old in list(logger.handlers):
        if isinstance(old, _LogHandler):
            old.remove()
    handler = _LogHandler(logger)
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(lvl)
    # Our handler prints; propagating too would print twice under a
    # root handler (e.g. after logging.basicConfig).
    logger.propagate = False
    return handler


class HeadraceTracer:
    """What `setup_tracing` returns: keep a reference while the dataflow runs.

    ``shutdown()`` (or leaving a ``with`` block) flushes pending spans and
    removes the log handler.

    >>> with setup_tracing(log_level="ERROR") as tracer:
    ...     tracer.provider is None
    True
    """

    def __init__(self, handler: _LogHandler, provider: Any = None) -> None:
        self.handler = handler
        self.provider = provider

    def shutdown(self) -> None:
        """Flush and stop the span exporter, if any, and remove the log handler.

        >>> setup_tracing().shutdown()
        """
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None
        self.handler.remove()

    def __enter__(self) -> HeadraceTracer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def _with_scheme(endpoint: str) -> str:
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def _load_exporter(module: str) -> Any:
    try:
        return importlib.import_module(module).OTLPSpanExporter
    except ImportError:
        return None


def _make_exporter(url: str | None) -> Any:
    """An OTLP span exporter for ``url``: gRPC unless an http(s) URL asks for HTTP."""
    grpc = _load_exporter("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    http = _load_exporter("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    if grpc is None and http is None:
        msg = f"no OTLP span exporter is installed; {_OTEL_HINT}"
        raise ImportError(msg)
    if url is None:
        return grpc() if grpc is not None else http()
    if url.startswith("grpc://") or url.startswith("grpc:://"):
        if grpc is None:
            msg = f"{url!r} needs the OTLP/gRPC exporter, which is not installed; {_OTEL_HINT}"
            raise ImportError(msg)
        return grpc(endpoint="http://" + url.split("//", 1)[1], insecure=True)
    if http is not None and url.startswith(("http://", "https://")):
        return http(endpoint=url)
    if grpc is None:
        return http(endpoint=_with_scheme(url))
    return grpc(endpoint=_with_scheme(url), insecure=not url.startswith("https://"))


def _otel_provider(config: JaegerConfig | OtlpTracingConfig) -> Any:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        msg = f"{type(config).__name__} needs OpenTelemetry, which is not installed; {_OTEL_HINT}"
        raise ImportError(msg) from None
    url = config.endpoint if isinstance(config, JaegerConfig) else config.url
    if isinstance(config, JaegerConfig) and url is None:
        url = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
        url = "grpc://" + url.split("://", 1)[-1]
    exporter = _make_exporter(url)
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    # The global provider can be set once per process; later setups still
    # export through their own provider (HeadraceTracer.provider).
    if not getattr(trace.get_tracer_provider(), "_headrace", False):
        provider._headrace = True  # type: ignore[attr-defined]
        trace.set_tracer_provider(provider)
    return provider


def setup_tracing(
    tracing_config: TracingConfig | None = None, log_level: str | None = None
) -> HeadraceTracer:
    """Set the ``headrace`` log level and, optionally, export traces.

    ``log_level`` is ``"ERROR"`` (the default), ``"WARN"``, ``"INFO"``,
    ``"DEBUG"`` or ``"TRACE"``; logs go to standard error (as JSON lines when
    ``HEADRACE_LOG_FORMAT=json``). ``tracing_config`` is `OtlpTracingConfig`
    or `JaegerConfig` (needs ``pip install headrace[otel]``) or ``None`` for
    logs only. Keep the returned object alive while the dataflow runs.

    >>> tracer = setup_tracing(None, "DEBUG")
    >>> logging.getLogger("headrace.engine").isEnabledFor(logging.DEBUG)
    True
    >>> tracer.shutdown()
    """
    handler = setup_logging(
        log_level if log_level is not None else "ERROR",
        json=os.environ.get("HEADRACE_LOG_FORMAT", "").strip().lower() == "json",
    )
    if tracing_config is None:
        return HeadraceTracer(handler)
    if not isinstance(tracing_config, JaegerConfig | OtlpTracingConfig):
        msg = (
            f"tracing_config must be an OtlpTracingConfig or JaegerConfig; got "
            f"{type(tracing_config).__name__}"
        )
        raise TypeError(msg)
    return HeadraceTracer(handler, _otel_provider(tracing_config))
