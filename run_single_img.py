#!/usr/bin/env python3
"""Score one reference/distorted pair with a foundation-model feature distance.

  python run_single_img.py -ref ref.png -dis dis.png -m dinov1 -d wsd
  python run_single_img.py -ref ref.png -dis dis.png -m clip_vitb32 -d all --json
  python run_single_img.py -ref ref.png -dis dis.png -d l2,cos --layers 1-6,9 --maps out/

Prints one `distance<TAB>score` line per distance (higher = more different), or JSON.
All distances come from one feature pass. Exit code 2 on bad input, with one line saying why.
"""
import sys

from utils import ArgParser, cli_entry, to_json


def build_parser():
    p = ArgParser(__doc__)
    p.add_argument("-ref", "--ref", help="reference image")
    p.add_argument("-dis", "--dis", help="distorted image (same size as the reference)")
    p.add_argument("-m", "--model", default="dinov1", help="backbone (see --list-models; default dinov1)")
    p.add_argument("-d", "--distance", default="wsd", help="distance, comma list or 'all' (default wsd)")
    p.add_argument("-r", "--resize", type=int, default=None, help="resize both images to N×N first (off by default)")
    p.add_argument("--weights", help="checkpoint file (else $ZSIQA_WEIGHTS_DIR, library caches, download)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default auto)")
    p.add_argument("--model-norm", action="store_true",
                   help="normalise windows with the model's own mean/std (not the published protocol)")
    p.add_argument("--precision", default="published", help="published|fp32|fp16|bf16 (default published)")
    p.add_argument("--layers", metavar="SPEC", help="compare only these blocks, 1-based, e.g. 1-6,9 (all: the default; "
                   "a subset is outside the published protocol for skld/jsd/wsd/swd)")
    p.add_argument("--maps", metavar="DIR", help="write per distance DIR/<distance>.npy (map at the image's size) "
                   "and DIR/<distance>.png (heatmap over the distorted image)")
    p.add_argument("--json", action="store_true", help="print {\"model\": ..., \"scores\": {...}}")
    p.add_argument("--list-models", action="store_true", help="list the registered backbones and exit")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    import models
    if args.list_models:
        rows = models.list_models()
        print(to_json(rows, indent=1) if args.json else models.format_model_table(rows))
        return 0
    if not args.ref or not args.dis:
        from utils import UserError
        raise UserError("both -ref and -dis are required (or --list-models)")
    if args.maps:
        import maps
        maps.check_folder(args.maps)  # before any work: an unwritable folder fails at once
    from engine import Scorer
    scorer = Scorer(args.model, args.distance, device=args.device, precision=args.precision,
                    weights=args.weights, resize=args.resize, workers=0, model_norm=args.model_norm, layers=args.layers)
    scores = scorer([args.ref], [args.dis])
    scores = {scorer.distances[0]: scores} if scorer.single else scores
    values = {d: float(v[0]) for d, v in scores.items()}
    if args.json:
        print(to_json({"model": args.model, "scores": values}))
    else:
        sys.stdout.write("".join(f"{d}\t{v:.10g}\n" for d, v in values.items()))
    if args.maps:
        _write_maps(scorer, args)
    return 0


def _write_maps(scorer, args):
    """Spatial maps of the pair into args.maps (see maps.py); the paths go to stderr."""
    import maps
    from utils import to_float
    dis = to_float(scorer._prepare(args.dis))
    written = maps.write_maps(scorer.maps(args.ref, args.dis), dis, args.maps, scorer.backbone.name)
    sys.stderr.write(f"wrote {len(written)} files to {args.maps}\n")


if __name__ == "__main__":
    main()
