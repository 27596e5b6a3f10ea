"""The operator's I/O that needs no Kubernetes: Redis (a real server) and worker scraping."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster as RedisClusterClient

from headrace._engine import open_store
from headrace._engine._serve import EndpointServer, Readiness
from headrace_operator import _kube
from headrace_operator.autoscaler import parse_metrics
from headrace_operator.observation import PodInfo
from tests.support.redis_cluster import RedisCluster
from tests.support.servers import RedisServer, free_port


def _commit_some_state(url: str, prefix: str) -> None:
    store = open_store(url, prefix)
    store.start_execution(worker_count=4, key_groups=64)
    n = store.write_epoch(1, [("flow.count", 3, "k", b"v" * 10)])
    store.commit(1, n)
    store.release()  # as a run that ended: its lease key goes
    store.close()


def test_store_info_reads_what_the_runtime_committed(redis_server: RedisServer) -> None:
    stores = _kube.Stores()
    assert stores.info(redis_server.url, "ns/empty") == _kube.StoreInfo(ok=True, exists=False)
    _commit_some_state(redis_server.url, "ns/wc")
    info = stores.info(redis_server.url, "ns/wc")
    assert info.ok and info.exists
    assert (info.epoch, info.worker_count, info.key_groups) == (1, 4, 64)
    assert info.epoch_bytes > 0 and info.committed_at > 0


def test_store_delete_and_expire(redis_server: RedisServer) -> None:
    stores = _kube.Stores()
    _commit_some_state(redis_server.url, "ns/a")
    _commit_some_state(redis_server.url, "ns/b")
    assert stores.expire(redis_server.url, "ns/a", 3600) > 0
    r = redis.Redis.from_url(redis_server.url)
    ttls = {k.decode(): r.ttl(k) for k in r.keys("*")}
    assert all(0 < t <= 3600 for k, t in ttls.items() if "{ns/a}" in k)
    assert all(t == -1 for k, t in ttls.items() if "{ns/b}" in k)
    assert stores.delete(redis_server.url, "ns/b") > 0
    assert stores.info(redis_server.url, "ns/b").exists is False
    assert stores.info(redis_server.url, "ns/a").exists is True


@pytest.mark.slow  # a Redis Cluster takes seconds to form
def test_a_redis_cluster_url_reads_expires_and_deletes_every_slot(redis_cluster: RedisCluster) -> None:
    from headrace_operator.spec import parse_spec

    spec = parse_spec({"image": "i", "flow": {"import": "m:f"}, "recovery": {"url": redis_cluster.url}})
    assert _kube.recovery_url(spec, None) == redis_cluster.url
    stores = _kube.Stores()
    _commit_some_state(redis_cluster.url, "ns/c")
    info = stores.info(redis_cluster.url, "ns/c")
    assert (info.ok, info.exists, info.epoch, info.key_groups) == (True, True, 1, 64)
    assert stores.keep(redis_cluster.url, "ns/c", "k1") == "kept epoch 1 as 'k1' (11 bytes)"
    r = RedisClusterClient(host="127.0.0.1", port=redis_cluster.ports[0])
    keys = sorted(k.decode() for k in r.scan_iter(match="hr{ns/c*"))
    assert "hr{ns/c:g3}:d:1~" in " ".join(keys)  # the key group's own hash tag
    assert stores.expire(redis_cluster.url, "ns/c", 3600) == len([k for k in keys if ":snap" not in k])
    assert all(0 < r.ttl(k) <= 3600 for k in keys if ":snap" not in k)
    assert stores.delete(redis_cluster.url, "ns/c") > 0
    assert stores.info(redis_cluster.url, "ns/c").exists is False
    assert [k.name for k in stores.info(redis_cluster.url, "ns/c").kept] == ["k1"]


@pytest.mark.slow  # takes a second or more: the fast tier stays under a minute
def test_unreachable_redis_is_reported_not_raised() -> None:
    port = free_port()
    info = _kube.Stores().info(f"redis://127.0.0.1:{port}/0", "ns/wc")
    assert not info.ok
    assert "ConnectionError" in info.error or "refused" in info.error


def test_scrape_reads_a_worker_endpoint() -> None:
    srv = EndpointServer("127.0.0.1", 0, lambda: "{}", Readiness())
    try:
        pods = [PodInfo("wc-0", 0, ip="127.0.0.1"), PodInfo("wc-1", 1, ip="")]
        sample = _kube.scrape(pods, srv.port)
    finally:
        srv.close()
    assert list(sample.pods) == ["wc-0"]
    assert isinstance(sample.pods["wc-0"], type(parse_metrics("")))


def test_scrape_leaves_out_pods_that_do_not_answer() -> None:
    pods = [PodInfo("wc-0", 0, ip="127.0.0.1")]
    assert _kube.scrape(pods, free_port(), timeout=1.0).pods == {}
