"""Logging setup (text and JSON) and optional OpenTelemetry tracing."""

from __future__ import annotations

import http.server
import importlib.util
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from headrace.tracing import (
    HeadraceTracer,
    JaegerConfig,
    JsonFormatter,
    OtlpTracingConfig,
    TracingConfig,
    _LogHandler,
    setup_logging,
    setup_tracing,
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


HAS_OTEL = _installed("opentelemetry.sdk")
HAS_OTLP_HTTP = HAS_OTEL and _installed("opentelemetry.exporter.otlp.proto.http")

log = logging.getLogger("headrace.test_tracing")


@pytest.fixture(autouse=True)
def _restore_headrace_logger() -> Iterator[None]:
    logger = logging.getLogger("headrace")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


def test_text_logs_go_to_stderr_at_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    handler = setup_logging("INFO")
    log.debug("hidden")
    log.info("shown %d", 1)
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "INFO headrace.test_tracing: shown 1" in err
    handler.remove()


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", json=True)
    log.debug("about %s", "x", extra={"step_id": "flow.map", "worker_index": 2})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "DEBUG"
    assert first["logger"] == "headrace.test_tracing"
    assert first["message"] == "about x"
    assert first["step_id"] == "flow.map" and first["worker_index"] == 2
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert "ValueError: bad" in second["exc_info"]


def test_json_formatter_survives_unserializable_extras() -> None:
    record = logging.LogRecord("headrace", logging.INFO, "", 0, "m", None, None)
    record.thing = object()
    assert json.loads(JsonFormatter().format(record))["thing"].startswith("<object")


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("DEBUG", logging.DEBUG),
        ("trace", logging.DEBUG),
        ("Info", logging.INFO),
        ("WARN", logging.WARNING),
        ("WARNING", logging.WARNING),
        ("ERROR", logging.ERROR),
        (logging.CRITICAL, logging.CRITICAL),
    ],
)
def test_level_names(name: str | int, level: int) -> None:
    setup_logging(name)
    assert logging.getLogger("headrace.x").getEffectiveLevel() == level


def test_unknown_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown log level 'LOUD'.*DEBUG"):
        setup_logging("LOUD")


def test_setting_up_twice_keeps_one_handler_and_remove_restores() -> None:
    logger = logging.getLogger("headrace")
    # Start from a logger without a Headrace handler, whatever ran before.
    for old in [h for h in logger.handlers if isinstance(h, _LogHandler)]:
        old.remove()
    others = [h for h in logger.handlers if not isinstance(h, _LogHandler)]
    before = (logger.level, logger.propagate, list(logger.handlers))
    setup_logging("INFO")
    handler = setup_logging("DEBUG", json=True)
    ours = [h for h in logger.handlers if isinstance(h, _LogHandler)]
    assert ours == [handler]
    assert [h for h in logger.handlers if not isinstance(h, _LogHandler)] == others
    assert logger.level == logging.DEBUG
    handler.remove()
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_setup_tracing_defaults_to_error_and_reads_log_format(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADRACE_LOG_FORMAT", "json")
    tracer = setup_tracing()
    assert isinstance(tracer, HeadraceTracer)
    assert tracer.provider is None
    log.warning("not shown")
    log.error("shown")
    lines = capsys.readouterr().err.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["shown"]
    tracer.shutdown()
    assert tracer.handler not in logging.getLogger("headrace").handlers


def test_configs_keep_their_arguments() -> None:
    otlp = OtlpTracingConfig("svc", url="grpc://collector:4317", sampling_ratio=0.5)
    jaeger = JaegerConfig("svc", endpoint="jaeger:4317")
    assert isinstance(otlp, TracingConfig) and isinstance(jaeger, TracingConfig)
    assert (otlp.service_name, otlp.url, otlp.sampling_ratio) == (
        "svc",
        "grpc://collector:4317",
        0.5,
    )
    assert (jaeger.service_name, jaeger.endpoint, jaeger.sampling_ratio) == (
        "svc",
        "jaeger:4317",
        1.0,
    )
    with pytest.raises(ValueError, match="sampling_ratio"):
        OtlpTracingConfig("svc", sampling_ratio=1.5)


def test_unknown_config_type_is_rejected() -> None:
    with pytest.raises(TypeError, match="OtlpTracingConfig or JaegerConfig"):
        setup_tracing(TracingConfig())


@pytest.mark.skipif(HAS_OTEL, reason="OpenTelemetry is installed here")
@pytest.mark.parametrize("config", [OtlpTracingConfig("svc"), JaegerConfig("svc")])
def test_tracing_without_the_extra_says_how_to_install_it(config: TracingConfig) -> None:
    with pytest.raises(ImportError, match=r"pip install headrace\[otel\]"):
        setup_tracing(config, "ERROR")


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Collector.bodies.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.mark.skipif(not HAS_OTLP_HTTP, reason="needs opentelemetry-sdk and the OTLP/HTTP exporter")
@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_spans_reach_an_otlp_http_collector() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1/traces"
        tracer = setup_tracing(OtlpTracingConfig("headrace-test-svc", url=url), "ERROR")
        assert tracer.provider is not None
        with tracer.provider.get_tracer("test").start_as_current_span("epoch"):
            pass
        tracer.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    assert _Collector.bodies, "the collector received no export"
    path, body = _Collector.bodies[0]
    assert path == "/v1/traces"
    assert b"headrace-test-svc" in body
    assert b"epoch" in body
