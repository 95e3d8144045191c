"""Grain pipeline over real ArrayRecord shards: resume, per-process slices, bad records.

Shards are written from precomputed codes (no VQ): record i has the unique code grid
``digits of i in base 16``, so every batch row can be traced back to its record.
"""

import json
import os

import numpy as np
import pytest

from mars_jax.data import pipeline, precomputed, records, verify
from mars_jax.data.config import default_data_config
from mars_jax.tokens import formats, vocab

N = 40
CODEBOOK = 16


def _codes(i):
    return np.array([(i >> 12) & 15, (i >> 8) & 15, (i >> 4) & 15, i & 15]).reshape(2, 2)


def _index(codes_row):
    c = [int(x) for x in vocab.token_to_code(codes_row)]
    return (c[0] << 12) | (c[1] << 8) | (c[2] << 4) | c[3]


def _examples(n, refined=False):
    for i in range(n):
        yield {
            "key": f"ex{i}",
            "text_ids": [1000 + i] * (1 + i % 5),
            "refined_ids": [2000 + i] if refined else [],
            "codes": _codes(i),
        }


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shards"))
    precomputed.write_precomputed_shards(out, _examples(N), 1, CODEBOOK, shard_size=16)
    return out


def _config(shards, **kw):
    c = default_data_config(1)
    c.update(shards=shards, text_len=8, caption_dropout=0.0, caption_ratio=0.0, num_epochs=1)
    c.update(**kw)
    return c


def _row_ids(batch):
    t2i = batch["t2i"]
    return [_index(row[8 + 1 : 8 + 5]) for row in t2i["tokens"]]


def test_exact_resume_across_epochs(shards):
    c = _config(shards, caption_ratio=0.5, caption_dropout=0.3, num_epochs=2)
    it = pipeline.make_train_iterator(c, global_batch_size=4, seed=3)
    for _ in range(8):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(6)]  # crosses the epoch boundary (10 batches per epoch)
    fresh = pipeline.make_train_iterator(c, global_batch_size=4, seed=3)
    fresh.set_state(state)
    for w in want:
        g = next(fresh)
        assert set(g) == set(w) == {"t2i", "caption"}
        for task in w:
            formats.check_layout(g[task])
            for k in formats.ROW_KEYS:
                np.testing.assert_array_equal(g[task][k], w[task][k])
    # The state is JSON-able bytes/str, as grain's checkpoint handler stores it.
    assert isinstance(state, dict) and json.dumps(state)


def test_process_slices_disjoint_and_covering(shards):
    c = _config(shards)
    per_process = []
    for p in range(2):
        it = pipeline.make_train_iterator(c, global_batch_size=8, process_index=p, process_count=2)
        ids = [i for b in it for i in _row_ids(b)]
        per_process.append(ids)
    assert [len(x) for x in per_process] == [20, 20]
    assert pipeline.num_batches(c, 8, 2) == 5
    assert not set(per_process[0]) & set(per_process[1])
    assert set(per_process[0]) | set(per_process[1]) == set(range(N))


def test_epochs_reshuffle_and_seed(shards):
    ids = [
        i
        for b in pipeline.make_train_iterator(_config(shards, num_epochs=2), 4)
        for i in _row_ids(b)
    ]
    assert sorted(ids[:N]) == sorted(ids[N:]) == list(range(N))
    assert ids[:N] != ids[N:] and ids[:N] != list(range(N))
    other = [
        i for b in pipeline.make_train_iterator(_config(shards, seed=1), 4) for i in _row_ids(b)
    ]
    assert other != ids[:N]


def test_caption_dropout_and_refined_captions(tmp_path):
    out = str(tmp_path)
    precomputed.write_precomputed_shards(out, _examples(N, refined=True), 1, CODEBOOK)
    c = _config(out, caption_dropout=0.5, refined_caption_prob=1.0)
    rows = [r for b in pipeline.make_train_iterator(c, 4) for r in b["t2i"]["tokens"]]
    dropped = [not (r[:8] != vocab.PAD).any() for r in rows]
    assert 8 <= sum(dropped) <= 32
    kept = [r for r, d in zip(rows, dropped, strict=True) if not d]
    # refined_caption_prob=1: every kept text is the refined one (ids 2000 + i).
    assert all(r[7] == 2000 + _index(r[9:13]) and (r[:7] == vocab.PAD).all() for r in kept)


def test_bad_records_are_named_counted_and_skipped(tmp_path, caplog):
    out = str(tmp_path)
    m = precomputed.write_precomputed_shards(out, _examples(12), 1, CODEBOOK, shard_size=6)
    path = os.path.join(out, m["buckets"]["2x2"]["files"][1])
    recs = records.read_shard(path)
    recs[1] = recs[1][:-7]  # truncated
    recs[2] = recs[2][:20] + bytes([recs[2][20] ^ 0xFF]) + recs[2][21:]  # garbled
    bad_codes = {"key": "ex9", "text_ids": [5], "codes": np.full((2, 2), 20)}  # >= 16
    recs[3] = records.encode_record(dict(bad_codes, orig_hw=(32, 32), image_hw=(32, 32)))
    records.write_shard(path, recs)
    with caplog.at_level("ERROR"):
        c = _config(out, read_threads=1)
        ids = [i for b in pipeline.make_train_iterator(c, 1) for i in _row_ids(b)]
    # Every good record still arrives; the stream keeps its length (the next epoch fills in).
    assert len(ids) == pipeline.num_batches(c, 1) == 12
    assert sorted(ids[:9]) == [0, 1, 2, 3, 4, 5, 6, 10, 11]
    assert set(ids[9:]) <= set(ids[:9])
    name = m["buckets"]["2x2"]["files"][1]
    assert f"{name} record 1: checksum mismatch" in caplog.text
    assert f"{name} record 2: checksum mismatch" in caplog.text
    assert f"{name} record 3 (codes): image codes out of range [0, 16)" in caplog.text
    assert "(3 in this process so far)" in caplog.text
    # The up-front scan lists exactly the three bad records, and exits non-zero.
    report = verify.verify_shards(out)
    assert report["records"] == 12
    assert [(b["file"], b["record"]) for b in report["bad"]] == [(name, 1), (name, 2), (name, 3)]
    assert verify.main([out]) == 1


def test_decode_record_errors():
    good = records.encode_record(
        {
            "key": "k",
            "text_ids": [1],
            "codes": np.zeros((1, 1)),
            "orig_hw": (1, 1),
            "image_hw": (1, 1),
        }
    )
    assert records.decode_record(good, "f r0")["key"] == "k"
    with pytest.raises(records.RecordError, match="f r0: record of 3 bytes is truncated"):
        records.decode_record(good[:3], "f r0")
    with pytest.raises(records.RecordError, match="not a mars_jax record"):
        records.decode_record(b"XXXX" + good[4:], "f r0")
    with pytest.raises(records.RecordError, match=r"text_ids out of the text range"):
        bad = records.encode_record(
            {
                "key": "k",
                "text_ids": [vocab.TEXT_VOCAB_SIZE],
                "codes": np.zeros((1, 1)),
                "orig_hw": (1, 1),
                "image_hw": (1, 1),
            }
        )
        records.decode_record(bad, "f r0")


def test_config_errors_are_clear(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        pipeline.make_train_iterator(_config(str(tmp_path)), 4)
    with pytest.raises(ValueError, match="data.stage=2 but .* holds stage-1 shards"):
        c = _config(shards)
        c.stage = 2
        pipeline.make_train_iterator(c, 4)
    with pytest.raises(ValueError, match="no bucket has a full per-process batch of 64"):
        pipeline.make_train_iterator(_config(shards), 64)


def test_grain_checkpoint_handler_round_trip(shards, tmp_path):
    """The trainer stores the iterator with grain.checkpoint.CheckpointHandler (an Orbax item)."""
    import grain
    from etils import epath

    c = _config(shards, caption_ratio=0.5)
    it = pipeline.make_train_iterator(c, 4)
    next(it)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(it))
    want = next(it)
    fresh = pipeline.make_train_iterator(c, 4)
    handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(fresh))
    got = next(fresh)
    for task in want:
        np.testing.assert_array_equal(got[task]["tokens"], want[task]["tokens"])


def test_stage2_buckets_resume_and_same_layout_on_every_process(tmp_path):
    out = str(tmp_path)
    rng = np.random.default_rng(0)
    grids = [(2, 2)] * 24 + [(2, 3)] * 12 + [(3, 2)] * 12
    examples = [
        {"key": f"b{i}", "text_ids": [7, 8], "codes": rng.integers(0, CODEBOOK, g)}
        for i, g in enumerate(grids)
    ]
    precomputed.write_precomputed_shards(out, examples, 2, CODEBOOK, shard_size=10)
    c = default_data_config(2)
    c.update(shards=out, text_len=4, caption_dropout=0.0, num_epochs=2)
    streams = [list(pipeline.make_train_iterator(c, 4, p, 2)) for p in range(2)]
    layouts = [[b["t2i"]["layout"] for b in s] for s in streams]
    assert layouts[0] == layouts[1] and len(layouts[0]) == pipeline.num_batches(c, 4, 2) == 24
    assert {lay[1][1] for lay in layouts[0]} == {6, 8}  # 2x2 and 2x3 / 3x2 grids (+2)
    it = pipeline.make_train_iterator(c, 4, 0, 2)
    for _ in range(5):
        next(it)
    state = it.get_state()
    fresh = pipeline.make_train_iterator(c, 4, 0, 2)
    fresh.set_state(state)
    for want in streams[0][5:]:
        got = next(fresh)["t2i"]
        assert got["layout"] == want["t2i"]["layout"]
        np.testing.assert_array_equal(got["tokens"], want["t2i"]["tokens"])
