"""What the test suite shares: servers, tools, flows and helpers (no tests here).

Test modules never import one another (``tests/test_suite.py`` checks it);
what two of them need lives here instead.

* `fixtures`: the shared fixtures (``redis_server``, ``location``), registered
  for the whole suite by ``tests/conftest.py`` as a pytest plugin;
* `servers` (real servers on free loopback ports), `kafka_broker` (Apache
  Kafka's own jars), `_tools` (the programs tests run, provisioned once);
* `procs` and `runs`: start, watch and check ``headrace.run`` processes;
* `stores`: open a recovery store at a ``location``;
* `helm`: render the chart; `kube_world` and `kube_models`: the Kubernetes
  operator's simulated cluster and a strict check of client models;
* `flows`: dataflows that subprocesses import by module path
  (``tests.support.flows.recovery_flows:running_counts()``).
"""
