"""Text normalisation, limits and the character vocabulary."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from mmfuse.data.manifest import text_given
from mmfuse.errors import ConfigError, MediaError
from mmfuse.params.preprocess import TextParams
from mmfuse.preprocess.text import Vocabulary, clean_text, normalise_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Zéro!! ", "zero"),
        ("FÜNF", "funf"),
        ("n/a", "n a"),
        ("???", ""),
        ("ｓｅｖｅｎ\u00a0\t8", "seven 8"),  # full-width letters (NFKC), no-break space, tab
        ("STRASSE straße", "strasse strasse"),  # case folding, not just lower()
        ("un\u200bdeux\x00", "un deux"),  # format and control characters
    ],
)
def test_normalisation(raw, expected):
    assert normalise_text(raw, TextParams()) == expected


def test_accents_can_be_kept():
    assert normalise_text("Zéro", TextParams(strip_accents=False)) == "zéro"


def test_utf8_bytes_are_accepted_and_other_bytes_refused():
    assert clean_text("Zéro".encode("utf-8"), TextParams()) == "zero"
    with pytest.raises(MediaError, match=r"text: the bytes are not valid UTF-8 \(byte 0xe9 at offset 1\)"):
        clean_text("Zéro".encode("latin-1"), TextParams())


def test_a_100000_character_text_is_refused():
    with pytest.raises(MediaError, match="text: 100000 characters is over the limit of 1000") as raised:
        clean_text("a" * 100_000, TextParams())
    assert raised.value.modality == "text" and raised.value.message == "100000 characters is over the limit of 1000."


def test_a_media_error_keeps_its_modality_through_pickling():
    """Errors cross process boundaries (worker pools); the modality must survive, and the printed line."""
    error = pickle.loads(pickle.dumps(MediaError("the payload is empty (0 bytes).", modality="text")))
    assert (error.modality, error.message, str(error)) == (
        "text",
        "the payload is empty (0 bytes).",
        "text: the payload is empty (0 bytes).",
    )
    summary = MediaError("2 record(s) cannot be preprocessed")  # about many records: no single modality
    assert summary.modality is None and str(summary) == "2 record(s) cannot be preprocessed"


def test_vocabulary_is_fitted_encodes_and_round_trips():
    vocab = Vocabulary.fit(["deux", "un", "dos"], min_freq=1)
    assert vocab.tokens == ("<pad>", "<unk>", "d", "e", "n", "o", "s", "u", "x")
    ids = vocab.encode("dux!", max_len=6)
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, 7, 8, 1, 0, 0]  # "!" unseen in train -> <unk>; padded with 0
    assert vocab.encode("deuxdeux", max_len=3).tolist() == [2, 3, 7]
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab


def test_rare_characters_fall_to_unk():
    vocab = Vocabulary.fit(["aab"], min_freq=2)
    assert vocab.tokens == ("<pad>", "<unk>", "a")


def test_a_foreign_vocabulary_is_refused():
    with pytest.raises(ConfigError, match="not a character vocabulary"):
        Vocabulary.from_dict({"level": "word", "tokens": ["<pad>", "<unk>", "five"]})


@pytest.mark.parametrize(
    ("text", "given"),
    [
        ("seven", True),
        ("7", True),
        ("?a", True),
        ("e\u0301", True),  # a letter with a combining accent
        (b"\xff", True),  # not UTF-8: given, so that preprocessing names the fault
        ("", False),
        (" \t\n", False),
        ("??", False),
        ("\u200b", False),  # zero-width space (a format character)
        ("\u0301", False),  # a lone combining mark
        ("\u2014", False),  # an em dash
        (None, False),
    ],
)
def test_a_text_counts_as_given_only_if_it_normalises_to_something(text, given):
    assert text_given(text) is given
    if isinstance(text, str):
        assert bool(normalise_text(text, TextParams(strip_accents=True))) is given
