import os
import sys

from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")

# CI runs the property tests with a fixed sequence of examples (reproducible results);
# local runs draw new examples each time and so keep searching for counterexamples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
