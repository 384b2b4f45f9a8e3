"""Command-line entry points: the ``hf-ssl`` console script and ``python -m hf_ssl.cli.<command>``."""
