"""NeuralFusionCore's torch-free core: data contracts, specs (universe, bar grid, windows), features, portfolio math.

Also what every other package shares: the walk-forward backtest and its report, the model package manifest,
output folders (`artifacts`), the click helpers of every package's CLI (`cli_common`) and the service's Python
client (`neuralfusion.client`, httpx only). It imports no other project package.
"""

from neuralfusion.dataset import MarketData, load_data_dir
from neuralfusion.errors import DataError
from neuralfusion.specs import BarSpec, PortfolioSpec, Universe, WindowSpec

__all__ = ["BarSpec", "DataError", "MarketData", "PortfolioSpec", "Universe", "WindowSpec", "load_data_dir"]
__version__ = "0.1.0"
