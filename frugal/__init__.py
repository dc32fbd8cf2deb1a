"""frugal: fine-tune, compress, measure and ship the cheapest model that is still good enough."""

__version__ = "0.1.0"
