"""inputs.batch, batch_getter and batch_getter_ex as a source partition would use them."""

import queue

from bytewax.inputs import batch, batch_getter, batch_getter_ex

print(list(batch(range(7), 3)))

q = queue.Queue()
for i in range(5):
    q.put(i)
it = batch_getter_ex(q.get_nowait, 2)
print(next(it), next(it), next(it), next(it))

items = iter([1, 2, None, 3, 4, 5])
it2 = batch_getter(lambda: next(items, "end"), 2, yield_on=None)
print(next(it2), next(it2), next(it2))

finite = iter([7, 8, 9])
it3 = batch_getter(finite.__next__, 2)
out = []
try:
    for b in it3:
        out.append(b)
except Exception as e:
    out.append(type(e).__name__)
print(out)
