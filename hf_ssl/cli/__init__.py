"""Command-line entry points: one module per ``hf-ssl <command>`` (the console script, `hf_ssl_console`,
dispatches to them), each also runnable as ``python -m hf_ssl.cli.<command>``."""
