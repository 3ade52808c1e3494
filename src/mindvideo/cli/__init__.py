"""The ``mindvideo`` command: one module per subcommand, registered in :mod:`mindvideo.cli.main`."""
