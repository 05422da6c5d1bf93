"""PyTorch side: news encoder, CGA model, loss, training, backtest (needs the `train` extra)."""

__all__: list[str] = []
