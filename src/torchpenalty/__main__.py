"""``python -m torchpenalty``: the command line.

``python -m`` puts the working directory first on ``sys.path``; it is taken out here,
before anything else is imported, so that a file there (a ``torch.py``, a ``numpy.py``, a
module an optional import looks for) never runs. Only a module the user names on the
command line (``explain MODULE:FACTORY``, ``--penalty module:Class``) is looked for there,
last.
"""

import os
import sys

_cwd = os.getcwd()
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != os.path.realpath(_cwd)]

from .cli import exit_with, main  # noqa: E402

exit_with(main())
