"""``python -m vit_sae_hooks.training ...``, also under ``torchrun --nproc_per_node N -m vit_sae_hooks.training ...``:
the options of ``vit-sae train``."""

import sys

from vit_sae_hooks.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
