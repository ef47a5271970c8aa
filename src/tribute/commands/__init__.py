"""What the ``tribute`` commands do, apart from parsing their arguments (:mod:`tribute.cli`).

- :mod:`.models`: the model a command explains (``module:factory``, a state dict, the demo model) and what its
  module declares (class names, input size);
- :mod:`.inputs`: the samples (image files or folders, a saved tensor) and how images are prepared for the model;
- :mod:`.targets`: the class explained (the prediction, an index or a class name);
- :mod:`.explain` and :mod:`.evaluate`: the ``explain`` and ``evaluate`` commands, which share the above;
- :mod:`.record`: the run log record a command adds to its run directory.

A mistake of the user (a bad path, an unreadable image, an unknown method or class, a module that cannot be
imported, weights that do not fit) raises :class:`CommandError`, which :func:`tribute.cli.main` prints as one line
``tribute <command>: error: ...`` with exit status 2 and no traceback.
"""


class CommandError(Exception):
    """A mistake in a command's arguments or files, stated in one line that names the problem and the way out."""
