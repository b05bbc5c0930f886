"""Prompt templates (a registry keyed by the names used in ``data.prompt_template``) and chat formatting.

A template turns a problem into chat messages; :class:`PromptFormatter` applies the tokenizer's chat template
once per prompt and keeps the token ids, so the rollout engines receive ids and never re-tokenise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grpo_lambda.data.jsonl import DataError
from grpo_lambda.rewards.spec import BOXED, HASHES  # the answer markers strict grading reads


@dataclass(frozen=True)
class PromptTemplate:
    """``user`` (and optional ``system``) text; ``{problem}`` is replaced literally (LaTeX braces are safe).
    ``answer_marker``: how the prompt asks for the final answer (``boxed``: ``\\boxed{}``; ``####``: after
    ``#### ``; None: it does not say), what ``reward.strict_format`` grades. ``shots``: worked examples
    (problem, response), given as earlier turns of the chat before the problem (few-shot prompting)."""

    name: str
    user: str
    system: str | None = None
    answer_marker: str | None = BOXED
    shots: tuple[tuple[str, str], ...] = ()

    def messages(self, problem: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        for shot, response in self.shots:
            msgs += [{"role": "user", "content": self.user.replace("{problem}", shot)},
                     {"role": "assistant", "content": response}]  # fmt: skip
        return msgs + [{"role": "user", "content": self.user.replace("{problem}", problem)}]

    def plain_text(self, problem: str) -> str:
        """The prompt for models without a chat template."""
        turns = [f"{self.user.replace('{problem}', shot)}\n{response}\n\n" for shot, response in self.shots]
        user = "".join(turns) + self.user.replace("{problem}", problem)
        return f"{self.system}\n\n{user}\n" if self.system else f"{user}\n"


BOXED_COT = "Please reason step by step, and put your final answer within \\boxed{}."
STEPS_EXAMPLE = (
    "Work it out one step at a time, as in this example.\n"
    "Example: Mia has 5 shells. Then Mia finds 3 more. Then Mia loses 2. How many shells does Mia have now?\n"
    "Step 1: 5 + 3 = 8\nStep 2: 8 - 2 = 6\nAnswer: \\boxed{6}"
)
# Chained sums (docs/study2.md; the `chain` verifier): two worked examples as earlier chat turns (few-shot), one
# with the hard step first and one with it last.
CHAIN_SHOTS = (
    (
        "What is 6 + 7 - 1?",
        "Step 1: 6 + 7 = 13. So far: 13.\nStep 2: 13 - 1 = 12. So far: 12.\nAnswer: \\boxed{12}",
    ),
    (
        "What is 9 + 0 - 4?",
        "Step 1: 9 + 0 = 9. So far: 9.\nStep 2: 9 - 4 = 5. So far: 5.\nAnswer: \\boxed{5}",
    ),
)

PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in (
        # Qwen2.5-Math / DeepSeek-R1 style instruction, appended to the problem (the paper's math setup).
        PromptTemplate("qwen_math", "{problem}\n" + BOXED_COT),
        # The same instruction as a system prompt (Qwen2.5-Math's own evaluation format).
        PromptTemplate("qwen_math_system", "{problem}", system=BOXED_COT),
        # Short instruction for small models (CPU demo).
        PromptTemplate("boxed_short", "{problem}\nGive the final answer as \\boxed{number}."),
        # Worked steps, then a boxed answer (the CPU study: several reasoning steps per response).
        PromptTemplate(
            "steps",
            "{problem}\nSolve it step by step, one line per step, then give the final answer as \\boxed{number}.",
        ),
        # The same with one worked example (a 135M model follows the format: one line per step).
        PromptTemplate("steps_example", "{problem}\n" + STEPS_EXAMPLE),
        # Chained sums: every running total, then the boxed answer, as the two worked examples show.
        PromptTemplate(
            "chain", "{problem}\nWork it out step by step, then give the answer.", shots=CHAIN_SHOTS
        ),
        # veRL's GSM8K prompt: the answer follows "####".
        PromptTemplate(
            "gsm8k",
            '{problem} Let\'s think step by step and output the final answer after "####".',
            answer_marker=HASHES,
        ),
        PromptTemplate("plain", "{problem}", answer_marker=None),
    )
}


def get_template(name: str) -> PromptTemplate:
    if name not in PROMPT_TEMPLATES:
        raise KeyError(f"unknown prompt template {name!r}; known: {', '.join(PROMPT_TEMPLATES)}")
    return PROMPT_TEMPLATES[name]


def answer_format(template: str, strict: bool) -> str | None:
    """What the verifiers read as the final answer: with ``strict`` (``reward.strict_format``) only the marker the
    prompt template asks for (``boxed`` or ``####``), else None (each verifier's own rules and fallbacks)."""
    if not strict:
        return None
    marker = get_template(template).answer_marker
    if marker is None:
        raise ValueError(f"reward.strict_format=true needs a prompt template that asks for an answer marker; "
                         f"{template!r} does not (use one of {', '.join(n for n, t in PROMPT_TEMPLATES.items() if t.answer_marker)})")  # fmt: skip
    return marker


@dataclass
class Prompt:
    """One formatted prompt: the row's fields plus the text and token ids sent to the engine."""

    id: str
    problem: str
    answer: str
    verifier: str
    dataset: str
    text: str
    token_ids: list[int] = field(repr=False)

    @classmethod
    def from_row(cls, row: dict[str, Any], text: str, token_ids: list[int]) -> Prompt:
        return cls(
            row["id"],
            row["problem"],
            row["answer"],
            row.get("verifier", ""),
            row.get("dataset", ""),
            text,
            token_ids,
        )


class PromptFormatter:
    """Applies a template and the tokenizer's chat template (``add_generation_prompt=True``) to rows.

    Args:
        tokenizer: a Hugging Face tokenizer.
        template: a template name from PROMPT_TEMPLATES.
        use_chat_template: False for base models: the plain template text is tokenised with special tokens.
        max_prompt_tokens: rows whose prompt is longer are dropped by :meth:`format_rows` (counted).
    """

    def __init__(
        self,
        tokenizer: Any,
        template: str,
        use_chat_template: bool = True,
        max_prompt_tokens: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.use_chat_template = use_chat_template
        self.max_prompt_tokens = max_prompt_tokens
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise DataError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template: "
                "set model.use_chat_template=false (base model) or use a tokenizer with one"
            )

    def render(self, problem: str) -> str:
        if not self.use_chat_template:
            return self.template.plain_text(problem)
        return self.tokenizer.apply_chat_template(
            self.template.messages(problem), add_generation_prompt=True, tokenize=False
        )

    def __call__(self, row: dict[str, Any]) -> Prompt:
        text = self.render(row["problem"])
        # The chat template already holds any BOS token; plain text gets the tokenizer's special tokens.
        ids = self.tokenizer(text, add_special_tokens=not self.use_chat_template)["input_ids"]
        return Prompt.from_row(row, text, list(ids))

    def format_rows(self, rows: list[dict[str, Any]]) -> tuple[list[Prompt], list[str]]:
        """Format every row once; return (prompts, ids of rows dropped for exceeding max_prompt_tokens)."""
        prompts, dropped = [], []
        for row in rows:
            p = self(row)
            if self.max_prompt_tokens is not None and len(p.token_ids) > self.max_prompt_tokens:
                dropped.append(p.id)
            else:
                prompts.append(p)
        return prompts, dropped
