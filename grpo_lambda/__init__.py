"""grpo-lambda: GRPO-λ (arXiv 2510.00194) — RL fine-tuning of LLMs with λ-return credit assignment."""

__version__ = "0.1.0"
