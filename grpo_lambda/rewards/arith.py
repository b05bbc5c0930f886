"""Value of a constant LaTeX arithmetic expression, in microseconds and without sympy: ``evaluate_latex``.

Most MATH answers are numbers written as arithmetic: ``2\\sqrt{5}``, ``\\frac{\\pi}{4}``, ``3^{10}-1``,
``-\\frac{\\sqrt{3}}{2}``. Parsing those with math-verify's ANTLR grammar costs 1-60 ms; this small
recursive-descent parser reads them directly and computes a float (it never calls ``eval``). Grammar::

    expr  := term (("+" | "-") term)*
    term  := unary (("*" | "/" | "\\cdot" | "\\times" | "\\div") unary | unary)*   # juxtaposition multiplies
    unary := ("-" | "+") unary | power
    power := atom ("^" group)?                                   # ^\\circ is dropped, as math-verify does
    atom  := number | "\\pi" | "(" expr ")" | "{" expr "}" | "\\frac" group group | "\\sqrt" ("[" expr "]")? group
    group := "{" expr "}" | digit | "\\pi"

Anything else (letters, commas, ``e``, factorials, mixed numbers such as ``2\\frac{1}{3}``, complex or
non-finite results, exponents above 1000) gives None: math-verify decides those.
"""

from __future__ import annotations

import math
import re

_TOKEN = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+|\\[A-Za-z]+|[-+*/^(){}\[\]])")
_DROP = re.compile(r"\\(?:left|right|displaystyle|[,;:! ])|\^\{?\\circ\}?|\$")
_COMMANDS = {"\\dfrac": "\\frac", "\\tfrac": "\\frac", "\\cdot": "*", "\\times": "*", "\\div": "/"}
_MAX_EXPONENT = 1000.0


class _Unsupported(Exception):
    pass


def tokenize(text: str) -> list[str]:
    """Tokens of ``text``; ``_Unsupported`` on any character outside the grammar."""
    text = _DROP.sub(" ", text)
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        match = _TOKEN.match(text, pos)
        if not match:
            raise _Unsupported(text[pos])
        tokens.append(_COMMANDS.get(match.group(1), match.group(1)))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Unsupported(token)
        self.pos += 1
        return token

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> float:
        value = self.unary()
        while True:
            token = self.peek()
            if token in ("*", "/"):
                self.take()
                right = self.unary()
                value = value * right if token == "*" else value / right
            elif token is not None and (
                token[0].isdigit() or token in ("(", "{", "\\frac", "\\sqrt", "\\pi")
            ):
                if self.tokens[self.pos - 1][0].isdigit() and (token[0].isdigit() or token == "\\frac"):
                    raise _Unsupported("number after number")  # "1 000"; 2\frac{1}{3} is 7/3 to math-verify
                value = value * self.unary()
            else:
                return value

    def unary(self) -> float:
        if self.peek() in ("-", "+"):
            return -self.unary() if self.take() == "-" else self.unary()
        return self.power()

    def power(self) -> float:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.group()
        if abs(exponent) > _MAX_EXPONENT or (base < 0 and exponent != int(exponent)):
            raise _Unsupported("exponent")
        return base**exponent

    def group(self) -> float:
        token = self.peek()
        if token == "{":
            self.take()
            value = self.expr()
            self.take("}")
            return value
        if token is not None and token[0].isdigit():  # \frac12, x^2: one digit only
            self.take()
            if len(token) > 1:
                self.tokens.insert(self.pos, token[1:])
            return float(token[0])
        if token == "\\pi":
            self.take()
            return math.pi
        raise _Unsupported(token)

    def atom(self) -> float:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        if token == "\\pi":
            return math.pi
        if token in ("(", "{"):
            value = self.expr()
            self.take(")" if token == "(" else "}")
            return value
        if token == "\\frac":
            numerator = self.group()
            return numerator / self.group()
        if token == "\\sqrt":
            index = 2.0
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.take("]")
            radicand = self.group()
            if radicand < 0 or index == 0:
                raise _Unsupported("sqrt")
            return radicand ** (1.0 / index)
        raise _Unsupported(token)


def evaluate_latex(text: str) -> float | None:
    """The float value of a constant LaTeX arithmetic expression, or None if it is not one (see module doc)."""
    try:
        parser = _Parser(tokenize(text))
        value = parser.expr()
        if parser.peek() is not None:
            return None
    except (_Unsupported, ArithmeticError, ValueError, RecursionError):
        return None
    return value if isinstance(value, float) and math.isfinite(value) else None
