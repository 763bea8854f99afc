"""Prompt templates for the routing policy (spec section 2).

`build_prompt` writes the instructions (the protocol, the turn budget, the candidate
models with their descriptions) and the question. With a tokenizer that has
`apply_chat_template`, the text goes through it as one user message (with the generation
prompt); without one it is the plain text, for tiny policies trained from scratch. `style="compact"` drops the instructions: just the model
list and the question, a few dozen tokens, for CPU quickstarts.
"""

from __future__ import annotations

from typing import Any, Mapping

from recal_jax.data.schema import ModelInfo

STYLES = ("full", "compact")


def _model_lines(models: Mapping[str, ModelInfo], with_descriptions: bool) -> str:
    lines = []
    for name, info in models.items():
        desc = " ".join(str(info.description).split())
        lines.append(f"- {name}: {desc}" if with_descriptions and desc else f"- {name}")
    return "\n".join(lines)


def instructions(models: Mapping[str, ModelInfo], protocol: str, max_turns: int) -> str:
    names = ", ".join(models)
    table = _model_lines(models, with_descriptions=True)
    if protocol == "multi_turn":
        return (
            "You answer questions by consulting a team of language models.\n"
            "First reason inside <think> ... </think>. When you need help, route a query to "
            "one model by writing <search> MODEL : your question </search>, where MODEL is "
            f"exactly one of: {names}. The model's reply comes back inside "
            "<information> ... </information>; reason about it in a new <think> block. "
            f"You may route at most {max_turns} queries, and cheaper models cost less. "
            "When you are sure, write the final answer, a few words only, inside "
            "<answer> ... </answer> and stop.\n"
            f"Models:\n{table}\n"
        )
    if protocol == "single_call":
        return (
            "Pick the one language model that should answer the question below.\n"
            "You may reason first inside <think> ... </think>; then write "
            f"<search> MODEL </search>, where MODEL is exactly one of: {names}. "
            "That model receives the question, and its reply is the final answer. "
            "Cheaper models cost less.\n"
            f"Models:\n{table}\n"
        )
    raise ValueError(f"unknown protocol {protocol!r}; expected 'multi_turn' or 'single_call'")


def build_prompt(
    question: str,
    models: Mapping[str, ModelInfo],
    protocol: str = "multi_turn",
    tokenizer: Any = None,
    *,
    style: str = "full",
    max_turns: int = 4,
) -> str:
    """The policy's prompt text for one instance (see the module docstring)."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {STYLES}")
    if not models:
        raise ValueError("build_prompt needs at least one model")
    if protocol not in ("multi_turn", "single_call"):
        raise ValueError(f"unknown protocol {protocol!r}; expected 'multi_turn' or 'single_call'")
    question = " ".join(str(question).split())
    if style == "compact":
        body = f"models: {' '.join(models)}\nquestion: {question}\n"
    else:
        body = instructions(models, protocol, max_turns) + f"Question: {question}\n"
    template = getattr(tokenizer, "apply_chat_template", None)
    if template is None or getattr(tokenizer, "chat_template", "") is None:
        return body  # no tokenizer, or a Hugging Face tokenizer without a chat template
    messages = [{"role": "user", "content": body}]
    for kwargs in ({"tokenize": False, "add_generation_prompt": True}, {"add_generation_prompt": True}, {}):
        try:
            text = template(messages, **kwargs)
        except TypeError:
            continue
        if not isinstance(text, str):
            raise ValueError(f"tokenizer.apply_chat_template returned {type(text).__name__}, expected str")
        return text
    raise ValueError("tokenizer.apply_chat_template accepts none of the known call signatures")
