"""lpirc: run, time and score on-device image classifiers by the LPIRC rules."""

__version__ = "0.1.0"
