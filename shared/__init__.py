"""The lab report intake application: everything the function folders call into."""

from shared import logs

# Before any function runs: every log record of the process is kept free of report values (shared/logs.py).
logs.install()
