"""Run run.py with the tiny test backbone registered (for subprocess and torchrun tests).
Usage: python tests/tiny_run.py WEIGHTS run.py-arguments..."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import models  # noqa: E402
import run  # noqa: E402

if __name__ == "__main__":
    fam = models.TimmViT("vit_base_patch16_224", depth=2, embed_dim=32, num_heads=2, mlp_ratio=2)
    models.BACKBONES["tiny_vit_test"] = models.Backbone("tiny_vit_test", "tiny ViT", fam, models.Weights("tiny_vit.pth", None, lambda: [], "the test suite"),
                                                        "layers", "fp32", (2, 197, 32))
    run.main(["--weights", sys.argv[1], *sys.argv[2:]])
