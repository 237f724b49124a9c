"""The public-domain corpus of the small-model quality campaign: the King James Bible.

Source: Debian package ``bible-kjv-text`` 4.38 (``/usr/lib/bible.data``), dumped with the
``bible`` program of package ``bible-kjv`` as ``bible -f Gen1:1-Rev22:21`` (one verse per line,
``<Book><chapter>:<verse> <text>``) and kept gzip'd as ``measurement/data/quality/kjv.txt.gz``.
Its copyright file: "The copyright for the King James Version text of the Bible is expired since
the translation was done in 1611 under King James the first of Great Britain."

Split by contiguous book ranges (66 books in canonical order):
  train      books  1-44  Genesis .. Acts
  validation books 45-46  Romans .. 1 Corinthians
  test       books 47-66  2 Corinthians .. Revelation   (held out: never trained or tuned on)
The verse references are stripped; each verse is one line, books are separated by a blank line.

This module needs no torch (only ``tokenizers`` for :func:`load_tokenizer` / :func:`train_tokenizer`).
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "quality"
KJV_PATH = DATA_DIR / "kjv.txt.gz"
TOKENIZER_PATH = DATA_DIR / "tokenizer.json"

SPLITS = {"train": (1, 44), "validation": (45, 46), "test": (47, 66)}
SPLIT_DOC = {
    "train": "books 1-44: Genesis..Acts",
    "validation": "books 45-46: Romans..1 Corinthians",
    "test": "books 47-66: 2 Corinthians..Revelation",
}
EOS = "<|endoftext|>"
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


@dataclass(frozen=True)
class Book:
    index: int  # 1-based canonical order
    abbrev: str  # as the bible program prints it (Ge, Exo, ... Rev)
    verses: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.verses)


def load_books(path: Path = KJV_PATH) -> list[Book]:
    books: list[tuple[str, list[str]]] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            m = _VERSE.match(line)
            if not m:
                raise ValueError(f"unexpected line in {path}: {line[:80]!r}")
            abbrev, text = m.group(1), m.group(4).strip()
            if not books or books[-1][0] != abbrev:
                books.append((abbrev, []))
            books[-1][1].append(text)
    return [Book(i + 1, a, tuple(v)) for i, (a, v) in enumerate(books)]


def split_text(split: str, books: list[Book] | None = None) -> str:
    lo, hi = SPLITS[split]
    books = books if books is not None else load_books()
    if len(books) != 66:
        raise ValueError(f"expected 66 books, got {len(books)}")
    return "\n\n".join(b.text for b in books if lo <= b.index <= hi) + "\n"


def train_tokenizer(text: str, vocab_size: int = 4096, path: Path | None = TOKENIZER_PATH):
    """Byte-level BPE trained on ``text`` (the train split only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
    return tok


def load_tokenizer(path: Path = TOKENIZER_PATH):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))


def encode(tok, text: str) -> list[int]:
    """Encode a split as one token stream (paragraph by paragraph, for speed; books end in EOS)."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for book in text.split("\n\n"):
        if not book.strip():
            continue
        lines = [ln + "\n" for ln in book.split("\n") if ln]
        for enc in tok.encode_batch(lines):
            ids.extend(enc.ids)
        ids.append(eos)
    return ids


def token_splits(tok=None, books: list[Book] | None = None) -> dict[str, list[int]]:
    tok = tok if tok is not None else load_tokenizer()
    books = books if books is not None else load_books()
    return {s: encode(tok, split_text(s, books)) for s in SPLITS}


if __name__ == "__main__":  # (re)build the tokenizer: python -m measurement.quality.corpus
    books = load_books()
    tok = train_tokenizer(split_text("train", books))
    for s, ids in token_splits(tok, books).items():
        print(s, SPLIT_DOC[s], len(ids), "tokens")
