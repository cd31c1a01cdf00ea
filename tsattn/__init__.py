"""tsattn: time-series forecasting with EMA history attention."""

__version__ = "0.1.0"
__all__ = ["__version__"]
