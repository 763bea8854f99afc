"""Tokenizer wrapper: a raw `tokenizers.Tokenizer` (trained here) or a local HF AutoTokenizer.

Both backends expose the same small surface used by the rollout engine and the trainer:
`encode` (no BOS / special tokens added), `decode`, `pad_id`, `eos_id`, `vocab_size`,
`token_to_id`, `apply_chat_template`, `save` and `Tokenizer.load`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
PROTOCOL_TAGS = (
    "<think>",
    "</think>",
    "<search>",
    "</search>",
    "<information>",
    "</information>",
    "<answer>",
    "</answer>",
)
_META_FILE = "recal_tokenizer.json"
_RAW_FILE = "tokenizer.json"
_HF_MARKERS = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "tokenizer.model")


def protocol_special_tokens(model_names: Sequence[str]) -> list[str]:
    """Routing-protocol tags followed by the pool's model names, each to be one token."""
    names = [str(n) for n in model_names]
    for n in names:
        if not n or n != n.strip():
            raise ValueError(f"model name {n!r} is empty or has surrounding whitespace")
    out: list[str] = []
    for tok in (*PROTOCOL_TAGS, *names):
        if tok not in out:
            out.append(tok)
    return out


def _plain_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant: " if add_generation_prompt else "")


def _check_messages(messages: Sequence[dict[str, str]]) -> None:
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")


class Tokenizer:
    """Uniform tokenizer.

    Build with `Tokenizer.from_tokenizers(tok, pad_token=..., eos_token=...)`,
    `Tokenizer.from_hf(hf_tokenizer)`, `Tokenizer.load(dir)` or `train_bpe(...)`.
    """

    def __init__(
        self,
        backend: Any,
        *,
        pad_token: str | None,
        eos_token: str | None,
        chat_template: str | None = None,
    ):
        self._raw = backend if isinstance(backend, tokenizers.Tokenizer) else None
        self._hf = None if self._raw is not None else backend
        if self._hf is not None and not hasattr(self._hf, "convert_tokens_to_ids"):
            raise ValueError(
                f"backend must be tokenizers.Tokenizer or a transformers tokenizer, got {type(backend)}"
            )
        self._chat_template = chat_template
        if eos_token is None:
            raise ValueError("tokenizer has no EOS token")
        self.eos_token = eos_token
        self.pad_token = pad_token if pad_token is not None else eos_token
        self.eos_id = self.token_to_id(self.eos_token)
        self.pad_id = self.token_to_id(self.pad_token)

    # construction -----------------------------------------------------------------------

    @classmethod
    def from_tokenizers(
        cls,
        tok: tokenizers.Tokenizer,
        *,
        pad_token: str = PAD_TOKEN,
        eos_token: str = EOS_TOKEN,
        chat_template: str | None = None,
    ) -> "Tokenizer":
        return cls(tok, pad_token=pad_token, eos_token=eos_token, chat_template=chat_template)

    @classmethod
    def from_hf(cls, hf_tok: Any) -> "Tokenizer":
        return cls(hf_tok, pad_token=hf_tok.pad_token, eos_token=hf_tok.eos_token)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load from a LOCAL directory written by `save` or by HF `save_pretrained`."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise ValueError(f"tokenizer directory {path!r} does not exist")
        meta_path = os.path.join(path, _META_FILE)
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
            raw = tokenizers.Tokenizer.from_file(os.path.join(path, _RAW_FILE))
            return cls(
                raw,
                pad_token=meta["pad_token"],
                eos_token=meta["eos_token"],
                chat_template=meta.get("chat_template"),
            )
        if not any(os.path.exists(os.path.join(path, m)) for m in _HF_MARKERS):
            raise ValueError(
                f"no tokenizer files in {path!r} (expected {_META_FILE} + {_RAW_FILE}, "
                f"or one of {_HF_MARKERS})"
            )
        from transformers import AutoTokenizer

        return cls.from_hf(AutoTokenizer.from_pretrained(path, local_files_only=True))

    def save(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        os.makedirs(path, exist_ok=True)
        if self._hf is not None:
            self._hf.save_pretrained(path)
            return
        self._raw.save(os.path.join(path, _RAW_FILE))
        meta = {
            "pad_token": self.pad_token,
            "eos_token": self.eos_token,
            "chat_template": self._chat_template,
        }
        with open(os.path.join(path, _META_FILE), "w") as f:
            json.dump(meta, f, indent=1)

    # vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added/special tokens included (max id + 1)."""
        if self._raw is not None:
            return self._raw.get_vocab_size(with_added_tokens=True)
        return len(self._hf)

    def token_to_id(self, token: str) -> int:
        if self._raw is not None:
            tid = self._raw.token_to_id(token)
        else:
            tid = self._hf.convert_tokens_to_ids(token)
            if tid == self._hf.unk_token_id and token != self._hf.unk_token:
                tid = None
        if tid is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return int(tid)

    # text <-> ids -----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; no BOS/EOS added. Special tokens in the text map to their ids."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects str, got {type(text)}")
        if self._raw is not None:
            return list(self._raw.encode(text, add_special_tokens=False).ids)
        return list(self._hf.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = [i for i in ids if i < 0 or i >= n]
        if bad:
            raise ValueError(f"ids out of range [0, {n}): {bad[:5]}")
        if self._raw is not None:
            return self._raw.decode(ids, skip_special_tokens=skip_special_tokens)
        return self._hf.decode(
            ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def apply_chat_template(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render a chat as text: the tokenizer's own template if it has one, else
        `"{role}: {content}\\n"` per message plus `"assistant: "` for the generation prompt."""
        _check_messages(messages)
        if self._hf is not None and getattr(self._hf, "chat_template", None):
            return self._hf.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        if self._chat_template:
            import jinja2

            env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
            return env.from_string(self._chat_template).render(
                messages=list(messages),
                add_generation_prompt=add_generation_prompt,
                eos_token=self.eos_token,
            )
        return _plain_chat(messages, add_generation_prompt)


def split_pieces(pattern: str) -> pre_tokenizers.Split:
    """The pre-tokenizer that isolates each match of `pattern`; ValueError naming the pattern
    when Oniguruma rejects it."""
    try:
        return pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated")
    except Exception as e:  # tokenizers raises a bare Exception for a bad regex
        raise ValueError(f"invalid split pattern {pattern!r}: {e}") from None


def train_bpe(
    corpus: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    chat_template: str | None = None,
    split_pattern: str = "",
) -> Tokenizer:
    """Byte-level BPE trained on `corpus`. Ids 0 and 1 are `<pad>` and `<eos>`; each of
    `special_tokens` (e.g. `protocol_special_tokens(pool)`) is then a single token.
    Every unicode string round-trips through encode/decode (256-byte base alphabet).
    `split_pattern` (a regex, Oniguruma syntax): each match is its own piece before the
    byte-level split, so no BPE token crosses its boundaries (e.g. the compose world's name
    syllables: a name is then the same tokens wherever it stands, seen or not)."""
    specials = [PAD_TOKEN, EOS_TOKEN]
    for s in special_tokens:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special token must be a non-empty str, got {s!r}")
        if s not in specials:
            specials.append(s)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    min_size = len(alphabet) + len(specials)
    if vocab_size < min_size:
        raise ValueError(
            f"vocab_size={vocab_size} < 256 byte symbols + {len(specials)} specials = {min_size}"
        )
    tok = tokenizers.Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([split_pieces(split_pattern), byte_level]) if split_pattern
                         else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return Tokenizer.from_tokenizers(tok, chat_template=chat_template)
