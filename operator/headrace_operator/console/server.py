"""The console's HTTP server: the page, its static files, and the JSON endpoints behind it.

Placed in the flow: `handlers` starts a `ConsoleServer` at the operator's
startup (its own thread and asyncio loop, so a slow page never delays a
reconcile) with a `KubeBackend`, which reads Dataflows and pods with the
operator's own ServiceAccount, the events the operator posted (kept in its
memory: reading Events would need RBAC the operator does not have) and a
worker's ``/dataflow``. What the pages show is decided by `console.data`.

Endpoints (GET only; everything else is refused):

=========================================================  ==========================================
``/``, ``/dataflows/{ns}/{name}``                          the page (``static/index.html``)
``/static/...``                                            its JavaScript, CSS and uPlot
``/api/dataflows``                                         the list (`data.summary` per Dataflow)
``/api/dataflows/{ns}/{name}``                             one Dataflow (`data.detail`)
``/api/dataflows/{ns}/{name}/series?panel=P&range=15m``    chart ``P`` (a name in `data.CHARTS`)
=========================================================  ==========================================

The series endpoint runs the named dashboard panel's queries against
``prometheusUrl`` and nothing else: the browser names a chart, never a query.

>>> srv = ConsoleServer("127.0.0.1", 0, StaticBackend([]))
>>> import json, urllib.request
>>> json.load(urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/api/dataflows"))
{'dataflows': [], 'namespaces': [], 'prometheus': False}
>>> srv.close()
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from aiohttp import ClientSession, ClientTimeout, web

from headrace_operator.console import data

__all__ = ["Backend", "ConsoleServer", "KubeBackend", "StaticBackend", "make_app"]

log = logging.getLogger("headrace.operator.console")

STATIC = Path(str(resources.files("headrace_operator.console").joinpath("static")))
_HEADERS = {
    # Only the page's own files run; nothing is framed or sniffed.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Backend(Protocol):
    """Where the console reads the cluster (blocking calls, run off the event loop)."""

    namespaces: list[str]

    def list_dataflows(self) -> list[dict[str, Any]]:
        """Every Dataflow the operator watches, as the API returns them."""
        ...

    def get_dataflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One Dataflow, or ``None``."""
        ...

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The events the operator posted for it, oldest first."""
        ...

    def graph(self, namespace: str, name: str, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """A worker's ``/dataflow`` JSON, or ``None`` and why not."""
        ...


class StaticBackend:
    """A backend over fixed objects: for tests and the doctest above.

    >>> StaticBackend([{"metadata": {"namespace": "a", "name": "x"}}]).get_dataflow("a", "x")["metadata"]
    {'namespace': 'a', 'name': 'x'}
    """

    def __init__(
        self,
        objects: list[dict[str, Any]],
        events: dict[tuple[str, str], list[dict[str, Any]]] | None = None,
        graphs: dict[tuple[str, str], dict[str, Any]] | None = None,
        namespaces: list[str] | None = None,
    ) -> None:
        self.objects = objects
        self._events = events or {}
        self._graphs = graphs or {}
        self.namespaces = namespaces or []

    def list_dataflows(self) -> list[dict[str, Any]]:
        return list(self.objects)

    def get_dataflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        for o in self.objects:
            meta = o.get("metadata") or {}
            if (meta.get("namespace"), meta.get("name")) == (namespace, name):
                return o
        return None

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self._events.get((namespace, name), []))

    def graph(self, namespace: str, name: str, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        g = self._graphs.get((namespace, name))
        return (g, "") if g is not None else (None, "no worker answered")


class KubeBackend:
    """The operator's view: the API with its ServiceAccount, its own events, the workers' ``/dataflow``."""

    GRAPH_TTL = 30.0

    def __init__(
        self,
        kube: Any,
        namespaces: list[str],
        events_of: Callable[[str, str], list[dict[str, Any]]],
    ) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self.events_of = events_of
        self._graphs: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}

    def list_dataflows(self) -> list[dict[str, Any]]:
        from headrace_operator.crd import GROUP, PLURAL, VERSION

        custom = self.kube.custom
        if self.namespaces:
            items: list[dict[str, Any]] = []
            for ns in self.namespaces:
                items += custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL).get("items", [])
            return items
        return list(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL).get("items", []))

    def get_dataflow(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.namespaces and namespace not in self.namespaces:
            return None
        got = self.kube.dataflow(namespace, name)
        return dict(got) if got is not None else None

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self.events_of(namespace, name)

    def graph(self, namespace: str, name: str, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        from headrace_operator.spec import SpecError, parse_spec

        execution = str(((obj.get("status") or {}).get("execution") or {}).get("id", ""))
        key = (namespace, name, execution)
        cached = self._graphs.get(key)
        if cached is not None and time.monotonic() - cached[0] < self.GRAPH_TTL:
            return cached[1], ""
        try:
            port = parse_spec(obj.get("spec") or {}).observability.metrics_port
        except SpecError as exc:
            return None, f"the spec is invalid: {exc}"
        pods = [p for p in self.kube.pods(namespace, name) if p.ip and p.ready and not p.terminating]
        if not pods:
            return None, "no worker pod is Ready"
        errors = []
        for p in sorted(pods, key=lambda p: p.ordinal):
            try:
                with urllib.request.urlopen(f"http://{p.ip}:{port}/dataflow", timeout=3) as r:
                    graph = json.loads(r.read().decode())
            except (OSError, ValueError) as exc:
                errors.append(f"{p.name}: {exc}")
                continue
            self._graphs[key] = (time.monotonic(), graph)
            return graph, ""
        return None, "; ".join(errors)


# ------------------------------------------------------------------ the application


def _json(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={**_HEADERS, "Cache-Control": "no-store"})


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class _Prometheus:
    """The named queries' proxy: Prometheus' HTTP API, from the console's own loop."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session: ClientSession | None = None

    async def get(self, path: str, params: dict[str, str]) -> Any:
        if self.session is None:
            self.session = ClientSession(timeout=ClientTimeout(total=15))
        async with self.session.get(f"{self.url}{path}", params=params) as r:
            body = await r.json(content_type=None)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus: {body.get('errorType', '')} {body.get('error', body)}")
        return body["data"]

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def make_app(
    backend: Backend, prometheus_url: str = "", now: Callable[[], float] = time.time
) -> web.Application:
    """The console's aiohttp application over ``backend`` (and Prometheus at ``prometheus_url``)."""
    app = web.Application()
    prom = _Prometheus(prometheus_url) if prometheus_url else None

    async def close_prometheus(_app: web.Application) -> None:
        if prom is not None:
            await prom.close()

    app.on_cleanup.append(close_prometheus)

    async def lag_now(namespace: str, name: str) -> float | None:
        if prom is None:
            return None
        expr = data.chart_queries("source-lag", namespace, name, step=data.step_for(900))[0][1]
        try:
            result = (await prom.get("/api/v1/query", {"query": expr}))["result"]
        except Exception as exc:  # the list shows no lag rather than failing
            log.debug("lag of %s/%s: %s", namespace, name, exc)
            return None
        return data._number(result[0]["value"][1]) if result else None

    async def page(_req: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={**_HEADERS, "Cache-Control": "no-cache"})

    async def dataflows(_req: web.Request) -> web.Response:
        objs = await asyncio.to_thread(backend.list_dataflows)
        objs.sort(key=lambda o: ((o.get("metadata") or {}).get("namespace", ""), o["metadata"]["name"]))
        need = [o for o in objs if data.lag_of(o.get("status") or {}) is None]
        lags = await asyncio.gather(
            *(lag_now(o["metadata"]["namespace"], o["metadata"]["name"]) for o in need)
        )
        by_key = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): v for o, v in zip(need, lags, strict=True)
        }
        rows = [
            data.summary(o, by_key.get((o["metadata"]["namespace"], o["metadata"]["name"]))) for o in objs
        ]
        return _json({"dataflows": rows, "namespaces": backend.namespaces, "prometheus": prom is not None})

    def _names(req: web.Request) -> tuple[str, str] | None:
        ns, name = req.match_info["ns"], req.match_info["name"]
        return (ns, name) if data.valid_name(ns, name) else None

    async def one(req: web.Request) -> web.Response:
        names = _names(req)
        if names is None:
            return _error(400, "not a namespace and Dataflow name")
        obj = await asyncio.to_thread(backend.get_dataflow, *names)
        if obj is None:
            return _error(404, f"no Dataflow {names[0]}/{names[1]} (or not watched by this operator)")
        events = await asyncio.to_thread(backend.events, *names)
        raw, why = await asyncio.to_thread(backend.graph, names[0], names[1], obj)
        lag = None if data.lag_of(obj.get("status") or {}) is not None else await lag_now(*names)
        return _json(data.detail(obj, events, data.graph_view(raw), why, lag))

    async def series(req: web.Request) -> web.Response:
        names = _names(req)
        if names is None:
            return _error(400, "not a namespace and Dataflow name")
        panel = req.query.get("panel", "")
        if panel not in data.CHARTS:
            return _error(400, f"panel must be one of {sorted(data.CHARTS)}")
        range_name = req.query.get("range", "15m")
        if range_name not in data.RANGES:
            return _error(400, f"range must be one of {list(data.RANGES)}")
        if prom is None:
            return _error(503, "no Prometheus configured (console.prometheusUrl)")
        range_s = data.RANGES[range_name]
        step = data.step_for(range_s)
        end = int(now()) // step * step
        start = end - range_s // step * step
        queries = data.chart_queries(panel, names[0], names[1], step, range_s)
        try:
            answers = await asyncio.gather(
                *(
                    prom.get(
                        "/api/v1/query_range",
                        {"query": expr, "start": str(start), "end": str(end), "step": str(step)},
                    )
                    for _fmt, expr in queries
                )
            )
        except Exception as exc:
            return _error(502, f"Prometheus did not answer: {exc}")
        table = data.align(
            [(fmt, a["result"]) for (fmt, _e), a in zip(queries, answers, strict=True)], start, end, step
        )
        meta = next(c for c in data.chart_list() if c["name"] == panel)
        return _json(
            {**meta, "range": range_name, "step": step, "queries": [e for _f, e in queries], **table}
        )

    app.router.add_get("/", page)
    app.router.add_get("/dataflows/{ns}/{name}", page)
    app.router.add_get("/api/dataflows", dataflows)
    app.router.add_get("/api/dataflows/{ns}/{name}", one)
    app.router.add_get("/api/dataflows/{ns}/{name}/series", series)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app


class ConsoleServer:
    """Serves `make_app` on ``host:port`` from a daemon thread with its own asyncio loop."""

    def __init__(self, host: str, port: int, backend: Backend, prometheus_url: str = "") -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._app = make_app(backend, prometheus_url)
        self.thread = threading.Thread(
            target=self._run, args=(host, port), name="headrace-console", daemon=True
        )
        self.thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self.loop)
        runner = web.AppRunner(self._app, access_log=None)
        try:
            self.loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, host, port)
            self.loop.run_until_complete(site.start())
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1]) if sockets else port
        except BaseException as exc:  # reported to the constructor's caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(runner.cleanup())
            self.loop.close()

    def close(self) -> None:
        """Stop serving and wait for the thread."""
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
