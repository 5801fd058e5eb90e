"""mailops: route, quota, queue and log a company's outgoing email from the command line."""

__version__ = "0.1.0"
