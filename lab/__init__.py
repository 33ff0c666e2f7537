"""Network-namespace lab shared by the tests, ``make demo`` and ``make bench``.

Not part of the engarde product and not installed: the tests import it because the repository
root is on ``sys.path`` (root ``conftest.py``), ``python -m bench`` runs from the repository root,
and ``examples/demo.py`` inserts the root itself.

Everything here is synchronous and drives the ``ip``, ``nft``, ``wg`` and ``ping`` commands.
Traffic only ever goes to loopback or to addresses inside namespaces a :class:`Lab` created.
"""

from __future__ import annotations

from lab.netns import *  # noqa: F403 - the package re-exports the module's public names
from lab.netns import __all__ as __all__
