"""Build a crystal-text dataset: the same as `hf-crystal dataset build` (see its --help).

    python datasets_scripts/build_dataset.py ../shared/data/mp_20/train.csv --out data/mp20
    python datasets_scripts/build_dataset.py --train a.csv --validation b.csv --test c.csv --out data/x \
        --push-to-hub USER/x
"""

import sys

from hf_crystal.commands import main

if __name__ == "__main__":
    sys.exit(main(["dataset", "build", *sys.argv[1:]]))
