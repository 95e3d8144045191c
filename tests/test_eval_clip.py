"""JAX CLIP vs ``transformers.CLIPModel`` / ``CLIPTokenizer`` on a tiny random config.

The HF model is saved with ``save_pretrained`` to a temporary folder (plus a tiny BPE
vocabulary) and loaded through ``mars_jax.eval.clip.load_clip``; nothing is downloaded.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mars_jax.eval import clip, fid  # noqa: E402

CAPTIONS = [
    "a red circle on the left",
    "Two  BLUE squares &amp; a triangle!",
    "the cat's hat, 42 times",
    "café 猫",
    "the the the the the the the the the the the the the the the the the the the the",
]
WORDS = ["the</w>", "a</w>", "red</w>", "circle</w>", "on</w>", "left</w>", "blue</w>", "cat</w>"]


def write_tiny_bpe(folder):
    """A byte-level BPE vocabulary: every byte (alone and word-final) and a few merges."""
    byte_chars = list(clip._bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    merges = []
    for word in WORDS:  # merge left to right: t h → th, th e</w> → the</w>
        chars = [*word[: -len("</w>") - 1], word[-len("</w>") - 1] + "</w>"]
        cur = chars[0]
        for nxt in chars[1:]:
            merges.append((cur, nxt))
            cur = cur + nxt
            if cur not in vocab:
                vocab.append(cur)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(folder / "vocab.json", "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in dict.fromkeys(merges)))
    return len(vocab)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_clip")
    vocab_size = write_tiny_bpe(folder)
    hf_tok = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=16,
            eos_token_id=hf_tok.eos_token_id, bos_token_id=hf_tok.bos_token_id, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=5,
            image_size=32, patch_size=8,
        ),
        projection_dim=24,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layrnorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder, model, hf_tok


def test_tokenizer_matches_hf(tiny):
    folder, _, hf_tok = tiny
    ours = clip.ClipTokenizer.from_folder(str(folder))
    for caption in CAPTIONS:
        want = hf_tok(caption)["input_ids"]
        assert [ours.bos_id, *ours.encode(caption), ours.eos_id] == want, caption
    assert ours.encode("the cat")[:1] == [ours.encoder["the</w>"]]  # merges are applied
    ids = ours(CAPTIONS, 16)
    assert ids.shape == (5, 16) and ids[4, -1] == ours.eos_id  # truncated, end kept


def test_embeddings_match_hf_clip_model(tiny):
    folder, model, _ = tiny
    ours = clip.load_clip(str(folder), batch_size=2)
    assert ours.cfg.image_size == 32 and ours.cfg.vision.heads == 5
    pixels = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    ids = ours.tokenizer(CAPTIONS, ours.cfg.context_length)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ids).long(),
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
        )
        vis = model.vision_model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
        txt = model.text_model(input_ids=torch.from_numpy(ids).long())
        want_img = model.visual_projection(vis.pooler_output).numpy()
        want_txt = model.text_projection(txt.pooler_output).numpy()
    got_img = np.asarray(clip.image_embeddings(ours.params, pixels, ours.cfg))
    got_txt = np.asarray(clip.text_embeddings(ours.params, ids, ours.cfg))
    assert np.abs(want_img).max() > 0.1 and np.abs(want_txt).max() > 0.1
    np.testing.assert_allclose(got_img, want_img, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        got_img / np.linalg.norm(got_img, axis=1, keepdims=True), out.image_embeds, atol=1e-4
    )
    # The batched feature path (padding the last batch) gives the same text rows.
    np.testing.assert_allclose(ours.text_features(CAPTIONS), want_txt, atol=1e-4, rtol=0)
    # CLIP score from our features == 100 * clipped cosine from HF's normalized embeddings.
    cos = (out.image_embeds[:3] * out.text_embeds[:3]).sum(-1).numpy()
    want_score = 100 * np.maximum(cos, 0).mean()
    assert fid.clip_score(got_img, got_txt[:3]) == pytest.approx(want_score, abs=1e-3)


def test_pytorch_bin_folder_and_errors(tiny, tmp_path):
    folder, model, _ = tiny
    for name in ("config.json", "vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    state = model.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = clip.load_clip(str(tmp_path))
    ref = clip.load_clip(str(folder))
    np.testing.assert_array_equal(ours.params["text"]["proj_DxE"], ref.params["text"]["proj_DxE"])
    # The converter turns the .bin into a torch-free model.safetensors of the same tensors.
    from mars_jax.eval import convert_weights

    converted = tmp_path / "converted"
    converted.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        (converted / name).write_bytes((folder / name).read_bytes())
    bin_path, st_path = tmp_path / "pytorch_model.bin", converted / "model.safetensors"
    assert convert_weights.main(["clip", str(bin_path), str(st_path)]) == 0
    again = clip.load_clip(str(converted))
    np.testing.assert_array_equal(
        again.params["vision"]["patch_w_PxPx3xD"], ref.params["vision"]["patch_w_PxPx3xD"]
    )
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(KeyError, match=r"vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        clip.load_clip(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="CLIP folder not found"):
        clip.load_clip(str(tmp_path / "nope"))


def test_image_preprocessing_matches_hf_pil_processor():
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    )
    rng = np.random.default_rng(0)
    for shape in [(300, 257, 3), (64, 96, 3), (224, 224, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        want = proc(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        got = clip.preprocess_images([image], 224)[0]
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_openai_state_dict_names_and_bpe_file(tmp_path):
    """OpenAI's layout (``clip.load``'s names, fused in_proj, [in, out] projections) and
    its gzipped merges file load to the same embeddings as the HF model they were made of."""
    import gzip

    from safetensors.numpy import save_file

    vocab_size = write_tiny_bpe(tmp_path)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=128, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=12, eos_token_id=vocab_size - 1,
            hidden_act="quick_gelu",
        ),
        vision_config=dict(
            hidden_size=128, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=8, hidden_act="quick_gelu",
        ),
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(1)
    model = transformers.CLIPModel(config).eval()
    hf = {k: v.numpy() for k, v in model.state_dict().items()}
    oa = {
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.proj": hf["visual_projection.weight"].T,
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "text_projection": hf["text_projection.weight"].T,
        "logit_scale": hf["logit_scale"],
        "input_resolution": np.array(16),
    }
    for ours, theirs in [("visual.ln_pre", "vision_model.pre_layrnorm"),
                         ("visual.ln_post", "vision_model.post_layernorm"),
                         ("ln_final", "text_model.final_layer_norm")]:  # fmt: skip
        for k in ("weight", "bias"):
            oa[f"{ours}.{k}"] = hf[f"{theirs}.{k}"]
    for oa_tower, hf_tower in [
        ("visual.transformer", "vision_model"),
        ("transformer", "text_model"),
    ]:
        o, h = f"{oa_tower}.resblocks.0", f"{hf_tower}.encoder.layers.0"
        for k in ("weight", "bias"):
            oa[f"{o}.attn.in_proj_{k}"] = np.concatenate(
                [hf[f"{h}.self_attn.{n}_proj.{k}"] for n in "qkv"]
            )
            for a, b in [("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                         ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2")]:  # fmt: skip
                oa[f"{o}.{a}.{k}"] = hf[f"{h}.{b}.{k}"]
    path = tmp_path / "ViT-tiny.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in oa.items()}, str(path))
    merges = (tmp_path / "merges.txt").read_text().splitlines()
    with gzip.open(tmp_path / clip.OPENAI_BPE, "wt", encoding="utf-8") as f:
        f.write("\n".join(merges) + "\n")
    ours = clip.load_clip(str(path))
    assert ours.cfg.vision.heads == 2 and ours.cfg.eos_token_id == vocab_size - 1
    ref = clip.ClipTokenizer.from_folder(str(tmp_path))
    assert ours.tokenizer.encoder == ref.encoder and ours.tokenizer.ranks == ref.ranks
    pixels = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    ids = ours.tokenizer(CAPTIONS[:3], 12)
    with torch.no_grad():
        vis = model.vision_model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
        txt = model.text_model(input_ids=torch.from_numpy(ids).long())
        want_img = model.visual_projection(vis.pooler_output).numpy()
        want_txt = model.text_projection(txt.pooler_output).numpy()
    got_img = np.asarray(clip.image_embeddings(ours.params, pixels, ours.cfg))
    got_txt = np.asarray(clip.text_embeddings(ours.params, ids, ours.cfg))
    np.testing.assert_allclose(got_img, want_img, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_txt, want_txt, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit
def test_torchscript_archive_reads_as_a_state_dict(tmp_path):
    from mars_jax.eval import weights

    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(2, 3)))
    module.save(str(tmp_path / "m.pt"))
    state = weights.read_torch(str(tmp_path / "m.pt"))
    assert sorted(state) == ["0.bias", "0.weight"]
    np.testing.assert_array_equal(state["0.weight"], module.state_dict()["0.weight"].numpy())


def test_config_reads_legacy_config_dict_keys():
    cfg = clip.ClipConfig(
        vision=clip.TowerConfig(128, 1, 2, 32), text=clip.TowerConfig(64, 1, 1, 32),
        image_size=16, patch_size=8, context_length=8, vocab_size=20, embed_dim=8,
        eos_token_id=19,
    )  # fmt: skip
    state = clip.random_state_dict(cfg)
    hf = {"text_config": None, "vision_config_dict": {"num_attention_heads": 4}}
    got = clip.config_from_state_dict(state, hf)
    assert got.vision.heads == 4 and got.text.heads == 1  # width // 64 without a config value
    assert got.vision.layers == 1 and got.image_size == 16 and got.eos_token_id == 19
    assert clip.config_from_state_dict(state, clip.hf_config_dict(cfg)) == cfg
