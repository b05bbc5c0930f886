"""A fast, sound "these two answers differ" test by numeric evaluation, run before math-verify.

math-verify decides equivalence by symbolic simplification and ``solve``, tens of milliseconds for a wrong
polynomial, tuple or interval, which is most of the grading time. Evaluating both sides to 30 digits (after
substituting the same fixed values for the same variable names) proves most wrong answers wrong in well under
a millisecond: if two expressions differ at a point, no simplification can make them equal. Only the
``True`` answer is acted on; anything this cannot evaluate, or finds equal, goes to math-verify unchanged.

This also vetoes two known math-verify false positives on numbers: it rounds floats to 6 decimal places and
chops values below 1e-15, so it calls 3.89e-10 = 4.89e-10 and 2/2^98 = 1/2^98.

Handled: constant expressions, expressions in single-letter variables (``x_1`` too), and tuples, intervals,
finite sets and matrices of those. Not handled (left to math-verify): equations and inequalities (equal up to
rearrangement), text-like multi-letter symbols (math-verify matches ``\\text{Monday}`` with ``M·o·n·d·a·y``),
and structures of different kinds (a tuple gold may match a set answer).
"""

from __future__ import annotations

import re

import sympy

from grpo_lambda.rewards.equivalence import REL_TOL

_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53)
# Two evaluation points; variable i (in sorted name order) gets value i of each. Irrational-looking, distinct.
_POINTS = (
    tuple(sympy.Rational(p + 10, p + 3) for p in _PRIMES),
    tuple(-sympy.Rational(2 * p + 7, p + 4) for p in _PRIMES),
)
_VARIABLE_NAME = re.compile(r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?")  # x, x_1, x_{ab}
_INF = {sympy.oo: "+inf", -sympy.oo: "-inf"}


class _Unknown(Exception):
    """Raised inside the signature builders: this value is not handled here."""


def _number(expr, point: dict) -> sympy.Expr | str:
    if expr in _INF:
        return _INF[expr]
    if not isinstance(expr, sympy.Expr):
        raise _Unknown
    if expr.free_symbols:
        expr = expr.xreplace({s: point[s.name] for s in expr.free_symbols})
    value = sympy.N(expr, 30)
    if value in _INF:
        return _INF[value]
    if not (value.is_number and value.is_finite) or value.free_symbols:
        raise _Unknown
    return value


def _signature(obj, point: dict):
    """A comparable nested structure of numbers, or ``_Unknown``."""
    if isinstance(obj, sympy.Interval):
        return ("interval", obj.left_open, obj.right_open, _number(obj.start, point), _number(obj.end, point))
    if isinstance(obj, sympy.Tuple):
        return ("tuple", tuple(_signature(x, point) for x in obj))
    if isinstance(obj, sympy.FiniteSet):
        values = [_signature(x, point) for x in obj]
        if not all(isinstance(v, sympy.Expr) for v in values):
            raise _Unknown
        return ("set", tuple(sorted(values, key=lambda v: (float(sympy.re(v)), float(sympy.im(v))))))
    if isinstance(obj, sympy.MatrixBase):
        return ("matrix", obj.shape, tuple(_number(x, point) for x in obj))
    if isinstance(obj, sympy.Basic) and not isinstance(obj, sympy.Expr):
        raise _Unknown  # equations, inequalities, unions, ...
    return _number(obj, point)


def _differ(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):  # infinities
        return a != b
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        return bool(abs(a - b) > float(REL_TOL) * max(abs(a), abs(b)))
    if not (isinstance(a, tuple) and isinstance(b, tuple)) or a[0] != b[0] or len(a) != len(b):
        raise _Unknown  # different kinds of object: math-verify has rules for those
    if a[0] == "interval":
        return a[1:3] != b[1:3] or _differ(a[3], b[3]) or _differ(a[4], b[4])
    if a[0] == "matrix" and a[1] != b[1]:
        return True
    items_a, items_b = a[-1], b[-1]
    if len(items_a) != len(items_b):
        return True
    return any(_differ(x, y) for x, y in zip(items_a, items_b))


def definitely_different(gold, pred) -> bool:
    """Whether parsed answers ``gold`` and ``pred`` provably differ (at one of two evaluation points)."""
    names = sorted({s.name for s in _free_symbols(gold) | _free_symbols(pred)})
    if len(names) > len(_PRIMES) or not all(_VARIABLE_NAME.fullmatch(n) for n in names):
        return False  # text-like symbols ("monday", "alpha"): math-verify compares those by its own rules
    for values in _POINTS[: 2 if names else 1]:
        point = {name: values[i] for i, name in enumerate(names)}
        try:
            if _differ(_signature(gold, point), _signature(pred, point)):
                return True
        except (_Unknown, ArithmeticError, ValueError, TypeError, AttributeError):
            return False
    return False


def _free_symbols(obj) -> set:
    return getattr(obj, "free_symbols", set()) if isinstance(obj, (sympy.Basic, sympy.MatrixBase)) else set()
