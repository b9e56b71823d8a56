"""One module per ``phylojax`` subcommand (see :mod:`phylojax.cli`)."""
