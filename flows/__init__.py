"""Prefect flows and tasks: they wire ``fl`` and ``workers`` together and log to
MLflow; no algorithm lives here."""

import logging

# Library logging etiquette: fedsim's loggers stay silent unless the
# application (the CLI, a worker process) configures handlers.
logging.getLogger("fedsim").addHandler(logging.NullHandler())
