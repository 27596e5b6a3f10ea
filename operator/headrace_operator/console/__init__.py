"""The operator's read-only web console: Dataflows, their graph, status, events and charts.

Served by the operator process on a port of its own (``--console-port``,
``HEADRACE_OPERATOR_CONSOLE_PORT``, 8081 by default; 0 turns it off). Three
modules: `data` (pure functions: what the pages show, the charts' PromQL read
from the shipped Grafana dashboards), `server` (the aiohttp application and
the JSON endpoints behind the page) and `vendor` (the pinned charting library
the page uses, uPlot, checked against its published checksums). The page
itself, plain JavaScript and CSS, is in ``static/``.
"""
