"""The ``recall-engine`` command line: one module per subcommand (see :mod:`.main`)."""
