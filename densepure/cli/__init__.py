"""The ``densepure`` command line: the only place that reads argv and the environment.

* :mod:`~densepure.cli.main` - the parser and the dispatch (``densepure COMMAND``), light commands;
* :mod:`~densepure.cli.arguments` - the argument groups and THE one argv -> options builder that every
  subcommand that runs models uses (certify, predict, serve, the Ray driver);
* :mod:`~densepure.cli.certify`, :mod:`~densepure.cli.serve`, :mod:`~densepure.cli.export`,
  :mod:`~densepure.cli.doctor` - the subcommands; :mod:`~densepure.cli.progress` - the certify/predict
  progress bar.
"""

from densepure.cli.main import EXIT_USER_ERROR, build_parser, main

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]
