"""enrich_cached calls the getter once per key (no expiry); TTLCache.remove forgets a key."""

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import TTLCache
from bytewax.testing import TestingSink, TestingSource, run_main

calls = []


def lookup(code):
    calls.append(code)
    return {"us": "United States", "fr": "France"}.get(code, "?")


def enrich(cache, item):
    name = cache.get(item)
    if item == "fr":
        cache.remove(item)
    return f"{item}:{name}"


flow = Dataflow("enrich")
codes = op.input("inp", flow, TestingSource(["us", "fr", "us", "xx", "fr", "us"]))
named = op.enrich_cached("name", codes, lookup, enrich)
out = []
op.output("out", named, TestingSink(out))
run_main(flow)
print(out)
print(calls)
print(TTLCache.__name__)
