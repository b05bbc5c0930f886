"""Answer extraction from untrusted model text: pure string code, no sympy, no eval.

Every function here is linear in the text it reads and reads a bounded amount of it: a response is cut to its
last ``MAX_RESPONSE_CHARS`` characters (final answers are at the end), an extracted answer longer than
``MAX_ANSWER_CHARS`` or nested deeper than ``MAX_BRACE_DEPTH`` braces is rejected before anything parses it.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_RESPONSE_CHARS = 100_000  # only the tail of a longer response is read
MAX_ANSWER_CHARS = 1_000  # an extracted final answer longer than this is unparsable
MAX_BRACE_DEPTH = 24  # deeper {...} nesting in an answer is unparsable (real answers stay under ~6)
_TAIL_CHARS = 4_000  # window searched by the "answer is ..." and last-number fallbacks


class AnswerRejected(ValueError):
    """An extracted answer that is too long, too deeply nested or otherwise unsafe to hand to a parser."""


def response_tail(response: str) -> str:
    """The last ``MAX_RESPONSE_CHARS`` characters of ``response`` (the final answer is at the end)."""
    return response[-MAX_RESPONSE_CHARS:]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, braces balanced, else None.

    Same rule as the data's ``build.py:last_boxed`` (so gold answers and model answers are read alike): the
    last occurrence only, nested braces counted (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``), and the rare
    ``\\boxed 5`` form. An unclosed last box (a truncated response) gives None. Raises ``AnswerRejected`` when
    the content exceeds ``MAX_ANSWER_CHARS`` or ``MAX_BRACE_DEPTH``; the scan never reads past those caps.
    """
    span = last_boxed_span(text)
    return None if span is None else text[span[1] : span[2]]


def last_boxed_span(text: str) -> tuple[int, int, int, int] | None:
    """Where `last_boxed` finds its answer: (marker start, content start, content end, marker end), with
    ``text[content start:content end]`` the content and ``text[marker start:marker end]`` the whole box
    (``\\boxed{...}`` or ``\\boxed 5``); None and ``AnswerRejected`` as `last_boxed`."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    if i < len(text) and text[i] == " ":
        m = re.match(rf" +([^\s$]{{1,{MAX_ANSWER_CHARS}}})", text[i : i + MAX_ANSWER_CHARS + 64])
        return (start, i + m.start(1), i + m.end(1), i + m.end(1)) if m else None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    end = min(len(text), i + MAX_ANSWER_CHARS + 2)
    for k in range(i, end):
        ch = text[k]
        if ch == "{":
            depth += 1
            if depth > MAX_BRACE_DEPTH:
                raise AnswerRejected(f"boxed answer nests braces deeper than {MAX_BRACE_DEPTH}")
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return start, i + 1, k, k + 1
    if end < len(text):
        raise AnswerRejected(f"boxed answer longer than {MAX_ANSWER_CHARS} characters")
    return None


# "The final answer is $x$.", "Answer: 12", "the answer is \frac{1}{2}" (last one wins).
_ANSWER_PHRASE_RE = re.compile(r"(?i)(?:final answer|answer)(?:\s+is)?\s*[:：]?\s*([^\n]{1,300})")
_MATH_SPAN_RE = re.compile(
    rf"\$\$?((?:\\\$|[^$]){{1,{MAX_ANSWER_CHARS}}})\$|\\\((.{{1,{MAX_ANSWER_CHARS}}}?)\\\)"
)


def answer_phrase(text: str) -> str | None:
    """The answer after the last "answer is" / "Answer:" in the tail of ``text``; math inside ``$...$`` preferred."""
    tail = text[-_TAIL_CHARS:]
    matches = list(_ANSWER_PHRASE_RE.finditer(tail))
    if not matches:
        return None
    rest = matches[-1].group(1)
    span = _MATH_SPAN_RE.search(rest)
    if span:
        return (span.group(1) or span.group(2)).strip()
    # Plain text: up to the end of the sentence ("42." / "42, so ..."), without trailing punctuation.
    rest = re.split(r"[;]|[.,](?=\s|$)", rest, maxsplit=1)[0]
    rest = rest.strip().rstrip(".").strip()
    return rest or None


_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number (``-1,234.5`` style, thousands commas allowed) in the tail of ``text``, else None."""
    found = _NUMBER_RE.findall(text[-_TAIL_CHARS:])
    return found[-1] if found else None


_GSM8K_HASH_RE = re.compile(r"####\s*([^\n]{1,200})")


def gsm8k_marker(text: str) -> str | None:
    """The text after the last ``#### `` marker (GSM8K's own answer format), else None."""
    span = gsm8k_marker_span(text)
    return None if span is None else text[span[1] : span[2]].strip()


def gsm8k_marker_span(text: str) -> tuple[int, int, int] | None:
    """Where `gsm8k_marker` finds its answer (in the last ``_TAIL_CHARS`` of ``text``): (``####`` start, answer
    start, answer end), else None."""
    matches = list(_GSM8K_HASH_RE.finditer(text, max(0, len(text) - _TAIL_CHARS)))
    return (matches[-1].start(), matches[-1].start(1), matches[-1].end(1)) if matches else None


def check_answer_size(answer: str) -> str:
    """Return ``answer`` stripped, or raise ``AnswerRejected`` if it is too long or nested too deeply."""
    answer = answer.strip()
    if len(answer) > MAX_ANSWER_CHARS:
        raise AnswerRejected(f"answer longer than {MAX_ANSWER_CHARS} characters")
    depth = deepest = 0
    for ch in answer:
        if ch in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "})]":
            depth = max(0, depth - 1)
    if deepest > MAX_BRACE_DEPTH:
        raise AnswerRejected(f"answer nests brackets deeper than {MAX_BRACE_DEPTH}")
    return answer


# ---------------------------------------------------------------------------------------------- normalisation
_STRIP_CMDS_RE = re.compile(r"\\(?:left|right|displaystyle|!|,|;|:| )|\$|~|\s")
_TEXT_WRAP_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\{([^{}]*)\}")


def normalize_answer(answer: str) -> str:
    """A canonical spelling for exact string comparison (a fast path; equivalence is math-verify's job).

    Drops whitespace, ``$``, ``\\left``/``\\right``, LaTeX spacing commands and ``\\text{}``-style wrappers,
    maps ``\\dfrac``/``\\tfrac`` to ``\\frac`` and drops one trailing period. Two answers with equal
    normal forms are the same answer.
    """
    s = _TEXT_WRAP_RE.sub(r"\1", answer)
    s = _STRIP_CMDS_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.rstrip(".")


_INT_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_DECIMAL_RE = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)")
_FRAC_RE = re.compile(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}")


def as_integer(answer: str) -> int | None:
    """The integer that ``answer`` spells exactly (``1,080``, ``-7``, ``+3``), else None. Digits capped."""
    s = normalize_answer(answer)
    if len(s) > 40 or not _INT_RE.fullmatch(s):
        return None
    return int(s.replace(",", ""))


_SCI_RE = re.compile(
    r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:[eE]|\\times10\^|\\cdot10\^|\*10\^)\{?([+-]?\d{1,4})\}?"
)


def as_number(answer: str) -> Fraction | None:
    """The exact rational that ``answer`` spells (integer, decimal, ``4.5e33``, ``4.5\\times10^{33}``,
    ``\\frac{p}{q}``, ``p/q``), else None."""
    s = normalize_answer(answer)
    if len(s) > 40:
        return None
    if _DECIMAL_RE.fullmatch(s):
        return Fraction(s.replace(",", ""))
    sci = _SCI_RE.fullmatch(s)
    if sci:
        return Fraction(sci.group(1)) * Fraction(10) ** int(sci.group(2))
    m = _FRAC_RE.fullmatch(s)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
    else:  # p/q with integer or decimal p, q ("-3./2")
        parts = s.split("/")
        if len(parts) != 2 or not all(_DECIMAL_RE.fullmatch(p) for p in parts):
            return None
        num, den = (Fraction(p.replace(",", "")) for p in parts)
    if den == 0:
        return None
    value = Fraction(num) / Fraction(den)
    return -value if m and m.group(1) == "-" else value


_BASE_RE = re.compile(r"([0-9A-Za-z]{1,64})_\{?(\d{1,2})\}?")


def as_base_digits(answer: str) -> tuple[str, int] | None:
    """``(digits, base)`` for a base-b numeral such as ``2516_8`` or ``\\text{1A}_{16}``, else None."""
    m = _BASE_RE.fullmatch(normalize_answer(answer))
    if not m:
        return None
    digits, base = m.group(1).upper(), int(m.group(2))
    if not 2 <= base <= 36:
        return None
    try:
        int(digits, base)
    except ValueError:
        return None
    return digits, base
