"""The ``sweeper`` command line: :data:`app` with every command registered, and :func:`main`."""

# isort: off
# Importing a module registers its commands; --help lists them in this order.
from sweeper.cli import running  # noqa: F401
from sweeper.cli import using  # noqa: F401
from sweeper.cli import reading  # noqa: F401
from sweeper.cli import cluster  # noqa: F401

# isort: on
from sweeper.cli.app import ENVIRONMENT, app, complete_study, installed_version, load_spec, main, parse_sets

__all__ = ["ENVIRONMENT", "app", "complete_study", "installed_version", "load_spec", "main", "parse_sets"]
