"""Optimus (Li et al., EMNLP 2020): BERT-encoder / GPT-2-decoder sentence VAE."""

__version__ = "0.1.0"
