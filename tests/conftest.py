import os
import sys
import tempfile

import pytest
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")
# the sweep's calibration cache (torchpenalty.sweep.calibration): one folder per test
# session, never the user's cache; subprocesses inherit it
os.environ.setdefault("TORCHPENALTY_CACHE_DIR", tempfile.mkdtemp(prefix="torchpenalty-cache-"))

# CI runs the property tests with a fixed sequence of examples (reproducible results);
# local runs draw new examples each time and so keep searching for counterexamples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def diabetes_std():
    """scikit-learn's diabetes data, features and target standardized (NumPy)."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    return (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()


@pytest.fixture(autouse=True)
def _registries_restored():
    """Classes a test defines (the guide's examples, registry tests) register by
    subclassing; each test ends with the registries it started with."""
    from torchpenalty.penalties import base
    from torchpenalty.sweep import losses
    from torchpenalty.updates import RULES

    saved = [(r, dict(r)) for r in (base._REGISTRY, RULES, losses.LOSSES)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)
