"""Samplers, all on the one incremental decoder (`mars_jax.model.decoder`).

`options`: how tokens are drawn (temperature, top-k/p) and classifier-free guidance;
`t2i`: text → image codes; `nktp`: stage-III parallel decoding of high-res codes;
`interleaved`: text that opens images; `images`: prompts → pixels for a trained model
(tokenizing, batching, VQ decoding, the stage-III cascade). Imports the model, the token
formats, the tokenizer and the VQ, never a CLI or the trainer.
"""
