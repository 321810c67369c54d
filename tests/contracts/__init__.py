"""One contract suite per port: the port's whole behaviour, written once.

Each module here holds the contract classes of one port package of ``chunkstore``
(``eventlog``, ``blobs``, ``files``, ``locks``, ``tails``, ``tokens``). A contract class
is named ``...Contract``, never ``Test...``, so pytest does not collect it: it asks a
backend of its subclass (``make_log``, ``make_blobs``, ...) and states what every backend
must do. Each backend's test module (``tests/test_<port>.py``) subclasses it once per
backend, as ``Test<Backend>``, and adds there what only that backend promises (files on
disk, raw SQLite rows, processes). A new backend is done when its subclass passes.

A ``make_*`` method gets pytest's ``tmp_path`` for backends that keep files; a backend
that needs other fixtures (a database server's URL) overrides the contract's fixture
instead, which is what every test of the contract asks for.
"""

import pytest

# The contracts' asserts are where the failures are: have pytest explain them as it
# does in test modules (it rewrites only those by default).
pytest.register_assert_rewrite(
    "tests.contracts.blobs",
    "tests.contracts.concurrency",
    "tests.contracts.eventlog",
    "tests.contracts.files",
    "tests.contracts.locks",
    "tests.contracts.tails",
    "tests.contracts.tokens",
)
