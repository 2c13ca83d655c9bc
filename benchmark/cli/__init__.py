"""The command line: `python -m benchmark <command>`."""
