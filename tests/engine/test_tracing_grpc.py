"""Traces over OTLP/gRPC: a dataflow's spans reach a real gRPC TraceService.

The receiver is a grpc server in the test process implementing the OTLP
``TraceService`` from ``opentelemetry-proto`` (which the gRPC exporter of the
``otel`` extra depends on); the dataflow runs in its own process, as a user's
would, with `setup_tracing` and `OtlpTracingConfig` or `JaegerConfig`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not _installed("opentelemetry.exporter.otlp.proto.grpc"),
        reason="needs the otel extra (opentelemetry-exporter-otlp-proto-grpc)",
    ),
]

SCRIPT = textwrap.dedent("""
    import sys
    from datetime import timedelta
    import headrace.operators as op
    from headrace.dataflow import Dataflow
    from headrace.testing import TestingSink, TestingSource, run_main
    from headrace.tracing import JaegerConfig, OtlpTracingConfig, setup_tracing

    config = eval(sys.argv[1])
    tracer = setup_tracing(config, "ERROR")
    flow = Dataflow("traced")
    s = op.input("inp", flow, TestingSource([("a", 1), ("b", 2), ("a", 3)]))
    s = op.map_value("double", s, lambda v: v * 2)
    s = op.stateful_map("sum", s, lambda st, v: ((st or 0) + v,) * 2)
    out = []
    op.output("out", s, TestingSink(out))
    run_main(flow, epoch_interval=timedelta(0))
    tracer.shutdown()
    print(out)
""")


class _Receiver:
    """An OTLP/gRPC trace receiver on 127.0.0.1 that keeps every export request."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        requests: list[Any] = []
        self.requests = requests

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                requests.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def spans(self) -> list[tuple[str, Any]]:
        """(service.name, span) for every span received."""
        out = []
        for req in self.requests:
            for rs in req.resource_spans:
                service = next(
                    a.value.string_value for a in rs.resource.attributes if a.key == "service.name"
                )
                out += [(service, sp) for ss in rs.scope_spans for sp in ss.spans]
        return out


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    yield r
    r.server.stop(0)


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ('OtlpTracingConfig("grpc-svc", url="grpc://127.0.0.1:{port}")', {}),
        # Bytewax's documented default form, "grpc:://host:port".
        ('OtlpTracingConfig("grpc-svc", url="grpc:://127.0.0.1:{port}")', {}),
        ('JaegerConfig("grpc-svc", endpoint="127.0.0.1:{port}")', {}),
        ('OtlpTracingConfig("grpc-svc")', {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:{port}"}),
    ],
)
@pytest.mark.slow
def test_spans_reach_an_otlp_grpc_receiver(receiver: _Receiver, config: str, env: dict[str, str]) -> None:
    environ = dict(os.environ)
    environ.update({k: v.format(port=receiver.port) for k, v in env.items()})
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, config.format(port=receiver.port)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert (res.returncode, res.stdout, res.stderr) == (0, "[('a', 2), ('b', 4), ('a', 8)]\n", "")
    spans = receiver.spans()
    assert {service for service, _ in spans} == {"grpc-svc"}
    names = Counter(sp.name for _, sp in spans)
    assert set(names) == {"epoch", "traced.double.flat_map_batch", "traced.sum.stateful_batch"}
    assert names["traced.sum.stateful_batch"] == 3  # one per input batch
    epochs = {sp.span_id for _, sp in spans if sp.name == "epoch"}
    assert all(sp.parent_span_id in epochs for _, sp in spans if sp.name != "epoch")


def test_a_grpc_url_without_the_grpc_exporter_says_how_to_install_it() -> None:
    """With only the HTTP exporter importable, a grpc:// URL names the extra to install."""
    script = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry.exporter.otlp.proto.grpc.trace_exporter"] = None
        from headrace.tracing import OtlpTracingConfig, setup_tracing
        try:
            setup_tracing(OtlpTracingConfig("s", url="grpc://127.0.0.1:1"))
        except ImportError as exc:
            print(exc)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.stdout == (
        "'grpc://127.0.0.1:1' needs the OTLP/gRPC exporter, which is not installed; "
        "install the OpenTelemetry extra: `pip install headrace[otel]`\n"
    )
