"""NeuralFusionCore's torch-free core: data contracts, features, windows, portfolio math, settings."""

from neuralfusion.dataset import MarketData, load_data_dir
from neuralfusion.errors import DataError
from neuralfusion.settings import BarSpec, PortfolioSpec, Universe, WindowSpec

__all__ = ["BarSpec", "DataError", "MarketData", "PortfolioSpec", "Universe", "WindowSpec", "load_data_dir"]
__version__ = "0.1.0"
