"""The ``kimball`` command: the server commands and the client commands."""
