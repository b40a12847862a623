"""The AST size count measures line spans of functions, methods and nested functions."""

from __future__ import annotations

from bytewax_fraud.tools.code_size import Sized, functions

SOURCE = """
def top(x):
    def inner():
        return 1
    return inner()


class C:
    def method(self):
        a = 1
        b = 2
        return a + b
"""


def test_functions_reports_each_definition_with_its_line_span() -> None:
    got = set(functions("m.py", SOURCE))
    assert got == {
        Sized("m.py:top", 4),
        Sized("m.py:top.inner", 2),
        Sized("m.py:C.method", 4),
    }
