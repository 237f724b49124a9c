"""measurement.quality.corpus: the KJV text, its book splits, encoding (fake tokenizer; the real
``tokenizers`` package only where it is installed)."""
from __future__ import annotations

import gzip

import pytest

from measurement.quality import corpus as C


@pytest.fixture(scope="module")
def books():
    return C.load_books()


def test_the_shipped_corpus_has_66_books_in_canonical_order(books):
    assert len(books) == 66 and [b.index for b in books] == list(range(1, 67))
    assert books[0].abbrev == "Ge" and books[0].verses[0] == "In the beginning God created the heaven and the earth."
    assert books[-1].abbrev == "Rev" and len(books[0].verses) == 1533
    assert [books[i].abbrev for i in (43, 44, 45, 46)] == ["Acts", "Rom", "1Cor", "2Cor"]


def test_splits_are_disjoint_book_ranges(books):
    texts = {s: C.split_text(s, books) for s in C.SPLITS}
    assert texts["train"].startswith("In the beginning") and texts["validation"].startswith("Paul, a servant")
    assert texts["test"].startswith(books[46].verses[0]) and texts["test"].endswith("Amen.\n")
    assert texts["validation"].count("\n\n") == 1  # two books
    assert sum(len(t) for t in texts.values()) == sum(len(b.text) for b in books) + 2 * (66 - 3) + 3


def _gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_load_books_parses_references_and_rejects_other_lines(tmp_path):
    p = _gz(tmp_path / "k.txt.gz", ["Ge1:1 In the beginning.", "Ge1:2 And the earth.", "", "1Jo2:3 Hereby we know."])
    b = C.load_books(p)
    assert [(x.index, x.abbrev, x.verses) for x in b] == [(1, "Ge", ("In the beginning.", "And the earth.")),
                                                         (2, "1Jo", ("Hereby we know.",))]
    assert b[0].text == "In the beginning.\nAnd the earth."
    with pytest.raises(ValueError, match="expected 66 books, got 2"):
        C.split_text("train", b)
    with pytest.raises(ValueError, match="unexpected line"):
        C.load_books(_gz(tmp_path / "bad.txt.gz", ["Genesis chapter one"]))


class FakeTok:
    """Token per word (id = length of the word), EOS = 0."""

    def token_to_id(self, t):
        return 0 if t == C.EOS else None

    def encode_batch(self, lines):
        return [type("E", (), {"ids": [len(w) for w in ln.split()]}) for ln in lines]


def test_encode_and_token_splits_with_a_fake_tokenizer(books):
    ids = C.encode(FakeTok(), "ab cde\nf\n\n\n\nghij\n")
    assert ids == [2, 3, 1, 0, 4, 0]  # each book ends in EOS; empty paragraphs are skipped
    fake = [C.Book(i, f"B{i}", (f"v{i}",)) for i in range(1, 67)]
    sp = C.token_splits(FakeTok(), fake)
    assert {s: len(v) for s, v in sp.items()} == {"train": 88, "validation": 4, "test": 40}


def test_train_and_load_a_tokenizer(tmp_path):
    pytest.importorskip("tokenizers")
    tok = C.train_tokenizer("in the beginning god created the heaven and the earth\n" * 20, vocab_size=300,
                            path=tmp_path / "tok.json")
    again = C.load_tokenizer(tmp_path / "tok.json")
    assert again.token_to_id(C.EOS) == tok.token_to_id(C.EOS) == 0
    ids = C.encode(again, "the earth\n")
    assert ids[-1] == 0 and again.decode(ids[:-1]) == "the earth\n"
