"""VQ-GAN image tokenizer: model (``model``), config, checkpoints, PyTorch import, training."""
