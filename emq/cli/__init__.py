"""The `emq` command line: one module per subcommand (`cmd_*.py`), found automatically."""
