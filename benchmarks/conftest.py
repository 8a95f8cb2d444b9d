import os

# The benchmarks import the peers module from this folder.
import sys

sys.path.insert(0, os.path.dirname(__file__))
