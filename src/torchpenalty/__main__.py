"""``python -m torchpenalty``: the command line.

``python -m`` puts the working directory first on ``sys.path``; it goes last here, before
anything else is imported, so that a file there (a ``torch.py``, a ``numpy.py``) never
shadows an installed package.
"""

import os
import sys

_cwd = os.getcwd()
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _cwd] + [_cwd]

from .cli import exit_with, main  # noqa: E402

exit_with(main())
