"""Prompt tokenisation with the exported ``tokenizer.json`` (the ``tokenizers`` library, no transformers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from vald.errors import EngineMismatchError


class PromptTokenizer:
    """Pads and truncates to the model's fixed length, as diffusers pipelines do."""

    def __init__(self, folder: Path, *, max_length: int, pad_id: int) -> None:
        from tokenizers import Tokenizer

        path = folder / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise EngineMismatchError(f"cannot load tokenizer {path.name} from the engine folder: {exc}") from None
        self._tok.enable_truncation(max_length)
        pad_token = self._tok.id_to_token(pad_id) or "[PAD]"
        self._tok.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> NDArray[np.int64]:
        """Token ids ``[len(texts), max_length]``, int64."""
        return self.encode(texts)[0]

    def encode(self, texts: list[str]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Token ids and attention mask (1 for tokens, 0 for padding), each ``[len(texts), max_length]``."""
        encoded = self._tok.encode_batch(texts)
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        return ids, np.array([e.attention_mask for e in encoded], dtype=np.int64)
