"""Shape bucketing: the one rounding helper of the project.

Jitted functions compile once per input shape, so lengths that vary from call to call
(prompt widths, sequence lengths, row counts) are rounded up to a multiple of a bucket
size before they reach a compiled function. This module imports nothing of the project,
so every package (models, rollout, training, ...) may use it.
"""

from __future__ import annotations


def round_up(x: int, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= x (x itself when it is one).

    x: a non-negative int (0 stays 0); multiple: an int >= 1.
    round_up(30, 16) == 32, round_up(32, 16) == 32, round_up(5, 1) == 5.
    """
    x, multiple = int(x), int(multiple)
    if multiple < 1:
        raise ValueError(f"round_up: multiple must be >= 1, got {multiple}")
    if x < 0:
        raise ValueError(f"round_up: x must be >= 0, got {x}")
    return -(-x // multiple) * multiple


def pad_count(x: int, multiple: int) -> int:
    """How many items to add to x items to reach round_up(x, multiple)."""
    return round_up(x, multiple) - int(x)


# The bucket sizes of a run, in one place (changing one changes the compiled shapes, so
# the numbers of a run; tests pin them through the pipeline pin).
SEQ_LEN_BUCKET = 16  # rollout sequence length T and SFT demonstration length
PROMPT_BUCKET = 64  # prompt widths of a generation round (capped at T)
TRAIN_LENGTH_BUCKET = 32  # the train step's width: the used prefix of a GRPO batch's rollouts
# the shared-prompt layout's prompt and completion widths: each piece is short and the
# completions' padding is paid G times per prompt, so a finer bucket pays for its extra shapes
SHARED_PROMPT_BUCKET = 16
