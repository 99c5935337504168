"""`python -m hf_crystal.commands` runs the `hf-crystal` command."""

import sys

from hf_crystal.commands import main

sys.exit(main())
