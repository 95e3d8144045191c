"""The demo LLM: its corpus, its pretraining, the compact asset and the base it expands to."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import stage1, stage2, stage3
from mars_jax.demo import lm_asset, lm_corpus, train_lm
from mars_jax.model import mars
from mars_jax.text.tokenizer import load_tokenizer
from mars_jax.tokens import vocab
from mars_jax.train_lib import base as base_lib


@pytest.fixture(scope="module")
def small_asset(tmp_path_factory):
    """A demo LLM pretrained for a few steps by the real command."""
    out = tmp_path_factory.mktemp("lm") / "asset"
    argv = [f"--out={out}", "--steps=40", "--num_sentences=8000", "--batch_size=8", "--no_progress"]
    assert train_lm.main(argv) == 0
    return str(out)


def test_corpus_is_bilingual_and_names_every_attribute():
    text = " ".join(lm_corpus.sentence(i) for i in range(3000))
    for word in lm_corpus.all_words():
        assert word in text, word
    assert " = " in text  # English-Chinese pairs
    assert lm_corpus.sentence(17, seed=3) == lm_corpus.sentence(17, seed=3)
    assert lm_corpus.sentence(17, seed=3) != lm_corpus.sentence(17, seed=4)


def test_pretraining_lowers_the_held_out_loss(small_asset):
    with open(os.path.join(small_asset, "train_log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    first_loss, last_loss = log[0]["held_out_loss"], log[-1]["held_out_loss"]
    # At init the softmax spreads over all 151,936 text ids (log = 11.93 nats), not only the
    # corpus's ~125: the compact model trains the full one's loss.
    assert log[0]["step"] == 0 and abs(first_loss - np.log(vocab.TEXT_VOCAB_SIZE)) < 0.5
    assert last_loss < first_loss - 5


def test_expanded_base_predicts_what_was_trained(small_asset):
    """The full 151,936-column model (random rows, the shared column) gives the training
    loss of the compact one: the asset loses nothing."""
    cfg, tensors, info = lm_asset.read_asset(small_asset)
    full = lm_asset.expand(cfg, tensors, int(info["init_seed"]))
    f32 = lambda tree: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    compact = f32(
        {
            "embed_rows": tensors["embed_rows"],
            "head_columns": tensors["head_columns"],
            "other_column": tensors["other_column"],
            "final_norm": tensors["final_norm"],
            "layers": lm_asset.unflatten_layers(
                {k: v for k, v in tensors.items() if k.startswith("layers.")}
            ),
        }
    )
    ids = tensors["token_ids"]
    tok = load_tokenizer()
    sentence = tok.encode("a red circle in the center = 一个红色的圆形在中间") + [vocab.ENDOFTEXT]
    row_global = np.asarray(sentence, np.int32)[None]
    row_compact = np.searchsorted(ids, row_global).astype(np.int32)
    assert np.array_equal(ids[row_compact], row_global)
    run_cfg = cfg.replace(compute_dtype="float32", attention="reference", frozen_dtype="float32")
    n_other = vocab.TEXT_VOCAB_SIZE - len(ids)
    compact_loss = float(train_lm.lm_loss(compact, jnp.asarray(row_compact), n_other, run_cfg))

    frozen = f32(full)
    trainable = {
        "layers": {
            "vision_attn": frozen["layers"]["text_attn"],
            "vision_mlp": frozen["layers"]["text_mlp"],
        }
    }
    seq = row_global.shape[1] - 1
    tokens = row_global[:, :-1]
    positions, valid = np.arange(seq)[None], np.ones((1, seq), bool)
    h = mars.forward_hidden(frozen, trainable, tokens, positions, valid, (("text", seq),), run_cfg)
    logits = h @ frozen["text_head"]
    logp = jax.nn.log_softmax(logits, axis=-1)
    full_loss = -float(jnp.mean(jnp.take_along_axis(logp, row_global[:, 1:, None], -1)))
    np.testing.assert_allclose(full_loss, compact_loss, rtol=1e-4)


def test_demo_base_is_written_once_and_is_the_expanded_asset(small_asset, tmp_path, monkeypatch):
    monkeypatch.setattr(lm_asset, "DEMO_LM_DIR", small_asset)
    c = stage1.get_config("demo_frozen")
    assert c.base.demo_lm and c.base.checkpoint
    c.base.checkpoint = str(tmp_path / "base_lm")
    base_lib.ensure_demo_base(c.base)
    info = base_lib.read_info(c.base.checkpoint)
    mtime = os.path.getmtime(os.path.join(c.base.checkpoint, base_lib.INFO_FILE))
    base_lib.ensure_demo_base(c.base)  # up to date: nothing rewritten
    assert os.path.getmtime(os.path.join(c.base.checkpoint, base_lib.INFO_FILE)) == mtime
    cfg, tensors, asset_info = lm_asset.read_asset(small_asset)
    expected = lm_asset.expand(cfg, tensors, int(asset_info["init_seed"]))
    frozen = base_lib.read_frozen(c.base.checkpoint)
    assert info["frozen_hash"] == base_lib.frozen_hash(frozen) == base_lib.frozen_hash(expected)
    ids = tensors["token_ids"]
    np.testing.assert_array_equal(
        np.asarray(frozen["embed"][ids], np.float32), np.asarray(tensors["embed_rows"], np.float32)
    )


def test_demo_base_has_the_tied_head_the_preset_names(small_asset, tmp_path, monkeypatch):
    """The demo presets' `model.text_head_ids` are the asset's trained ids, and the base it
    writes is tied that way; a base whose head is not tied as named is a clear error."""
    from mars_jax.model.config import ModelConfig

    monkeypatch.setattr(lm_asset, "DEMO_LM_DIR", small_asset)
    c = stage1.get_config("demo")
    _, tensors, _ = lm_asset.read_asset(small_asset)
    assert c.model.text_head_ids == tuple(sorted(tensors["token_ids"].tolist()))
    c.base.checkpoint = str(tmp_path / "base_lm")
    base_lib.ensure_demo_base(c.base)
    cfg = ModelConfig.from_dict(c.model)
    frozen, _ = base_lib.load_frozen(c.base, cfg, None)  # tied as named: loads
    assert frozen["text_head"].shape == (cfg.width, vocab.TEXT_VOCAB_SIZE)
    fewer = cfg.replace(text_head_ids=cfg.text_head_ids[1:])  # one trained id left out
    with pytest.raises(ValueError, match=f"text_head_ids.*id {cfg.text_head_ids[0]}"):
        base_lib.load_frozen(c.base, fewer, None)


def test_shipped_asset_covers_the_demo_text():
    """Every id of the demo's prompts has its own trained row in the shipped LLM."""
    _, tensors, info = lm_asset.read_asset(lm_asset.demo_lm_dir())
    assert train_lm.demo_prompt_ids() <= set(tensors["token_ids"].tolist())
    assert os.path.getsize(os.path.join(lm_asset.DEMO_LM_DIR, lm_asset.PARAMS_FILE)) < 10e6
    assert info["held_out_loss"] < 1.0


def test_demo_presets_load_the_pretrained_llm_and_train_both_tasks():
    """Both demo presets: the shipped LLM as base, a fresh vision expert, captions weighed up;
    `demo_frozen` keeps the LLM frozen (MARS), `demo` trains copies of its layers. Stages II
    and III continue stage I's run on the same base."""
    for preset in ("demo", "demo_frozen"):
        c = stage1.get_config(preset)
        assert c.base.demo_lm and c.base.checkpoint and c.model.vision_expert_init == "random"
        assert c.data.caption_ratio > 0 and c.train.task_weights.caption > 1
        assert bool(c.model.unfreeze) == (preset == "demo")
        # The measured choices (docs/RESULTS.md): Muon where only the vision expert learns;
        # the first command ranks 8 images per prompt by its own captions.
        assert c.optim.name == ("muon" if preset == "demo_frozen" else "adamw")
        assert c.sample.candidates == (8 if preset == "demo" else 1)
        assert c.sample.caption_candidates == (32 if preset == "demo" else 0)
        for later in (stage2.get_config(preset), stage3.get_config(preset)):
            assert later.base.checkpoint == c.base.checkpoint and later.base.demo_lm
            assert later.base.init_from == f"runs/{preset}_stage1"
