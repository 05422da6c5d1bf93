"""Data sources: bars and news from files and MongoDB."""

__all__: list[str] = []
