"""swcm: XLM-SWCM shared-weight encoder-decoders for extremely low-resource languages."""

__version__ = "0.1.0"
