"""``python -m openmm_cgml.cli``: the same as the ``cgml`` command."""
import sys

from openmm_cgml.cli import main

sys.exit(main())
