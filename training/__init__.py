"""PyTorch side: news encoder, CGA model, loss, training, backtest of a run (needs the `train` extra; no serving)."""

__all__: list[str] = []
