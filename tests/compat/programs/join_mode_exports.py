"""JoinInsertMode and JoinEmitMode are importable type aliases listing the modes."""

import typing

from bytewax.operators import JoinEmitMode, JoinInsertMode, windowing

print(typing.get_args(JoinInsertMode))
print(typing.get_args(JoinEmitMode))
print(typing.get_args(windowing.JoinInsertMode), typing.get_args(windowing.JoinEmitMode))
