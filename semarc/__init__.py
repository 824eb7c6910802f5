"""semarc: ultra-low-bitrate semantic image archiving."""
__version__ = "0.1.0"
