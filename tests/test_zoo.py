"""The backbone zoo: golden parity of every `models_more` row (PROTOCOL.md §3b) through the
API and the CLI, the newer backbones with random timm-format weights, refusals, the list."""
import json
import os

import pytest
import torch

import run_single_img
from helpers import GOLDEN, close, fails_one_line, golden_api_scores, golden_cli_mismatches
from tinymodel import TINY_VIT, TINY_WEIGHTS
from zsiqa import models, weights
from zsiqa.errors import UserError
from zsiqa.scorer import Scorer

DEVICE = os.environ.get("ZSIQA_TEST_DEVICE", "cpu")  # the API parity test also runs on a GPU in strict fp32

# golden rows name an architecture; every weight set of it is a registry entry
ENTRIES = {"openclip_vitb32": ("openclip_vitb32_laion", "openclip_vitb32_laion_tecoa4"),
           "embed_openclip_vitb32": ("embed_openclip_vitb32_laion", "embed_openclip_vitb32_laion_tecoa4"),
           "openclip_convnext_base": ("openclip_convnext_base", "openclip_convnext_laion_tecoa4"),
           "embed_openclip_convnext_base": ("embed_openclip_convnext_base", "embed_openclip_convnext_laion_tecoa4")}


@pytest.mark.golden
def test_every_models_more_row_via_api(golden, checkpoint):
    """The first weight set's entry of each architecture (features computed once per model)."""
    rows = golden["models_more"]
    scores = golden_api_scores(rows, checkpoint, DEVICE, entry=lambda m: ENTRIES.get(m, (m,))[0])
    bad = [(r["model"], r["distance"], r["ref"], scores[id(r)], r["score"])
           for r in rows if not close(scores[id(r)], r["score"])]
    assert len(rows) == 69 and not bad, bad


@pytest.mark.golden
def test_every_models_more_row_via_cli(golden, checkpoint, tmp_path, capsys):
    """The other weight set's entry where there are two (TeCoA4), else the same entry."""
    checked, bad = golden_cli_mismatches(golden["models_more"], checkpoint, tmp_path, capsys,
                                         entry=lambda m: ENTRIES.get(m, (m,))[-1])
    assert checked == 69 and not bad, bad


@pytest.mark.golden
def test_dinov1_reads_the_hugging_face_layout(checkpoint, tmp_path):
    """facebook/dino-vitb16 holds the same values in Hugging Face names: same scores."""
    from safetensors.torch import save_file
    sd = torch.load(checkpoint("dinov1"), map_location="cpu")
    hf = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
          "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
          "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
          "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(12):
        for old, new in names.items():
            for kind in ("weight", "bias"):
                hf[f"encoder.layer.{i}.{new}.{kind}"] = sd[f"blocks.{i}.{old}.{kind}"]
        for kind in ("weight", "bias"):
            for part, chunk in zip(("query", "key", "value"), sd[f"blocks.{i}.attn.qkv.{kind}"].chunk(3)):
                hf[f"encoder.layer.{i}.attention.attention.{part}.{kind}"] = chunk
    save_file({k: v.contiguous() for k, v in hf.items()}, str(tmp_path / "model.safetensors"))
    ref, dis = str(GOLDEN / "models" / "pair0_ref.png"), str(GOLDEN / "models" / "pair0_dis_blur.png")
    a = Scorer("dinov1", "l2,wsd", device="cpu", weights=checkpoint("dinov1"))(dis, ref)
    b = Scorer("dinov1", "l2,wsd", device="cpu", weights=str(tmp_path / "model.safetensors"))(dis, ref)
    assert torch.allclose(a["l2"], b["l2"], rtol=1e-6) and torch.allclose(a["wsd"], b["wsd"], rtol=1e-6)


NEW = ["dinov2_reg4", "dinov3", "siglip2", "eva02_clip"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW)
def test_newer_backbones_with_random_timm_weights(name, tmp_path):
    """Random weights saved as timm's hub files are (at the model's native size, so loading
    exercises timm's position-embedding adaptation to 224 px): finite stacks of the listed shape."""
    import timm
    from safetensors.torch import save_file
    b = models.BACKBONES[name]
    assert not b.published
    torch.manual_seed(0)
    native = timm.create_model(b.family.name, pretrained=False, num_classes=0)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, str(path))
    feats = models.FeatureExtractor(b, str(path), "cpu")(torch.rand(2, 3, 224, 224))
    assert "x".join(map(str, feats.shape[1:])) == b.shape and torch.isfinite(feats).all()
    normed = models.FeatureExtractor(b, str(path), "cpu", model_norm=True)(torch.rand(1, 3, 224, 224))
    assert torch.isfinite(normed).all()


def test_refusals(capsys, tmp_path):
    from PIL import Image
    for n in ("a", "b"):
        Image.new("RGB", (230, 230), (10, 20, 30)).save(tmp_path / f"{n}.png")
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    for model, dist, match in [("clip_rn50", "skld", "conv feature maps"),
                               ("openclip_convnext_base", "wsd", "conv feature maps"),
                               ("embed_dinov2", "l2", "only cos"), ("embed_clip_rn50", "l2", "only cos")]:
        fails_one_line(capsys, lambda model=model, dist=dist: run_single_img.main(["-ref", a, "-dis", b, "-m", model,
                                                                                   "-d", dist]), match, warnings=False)


def test_list_models(capsys):
    run_single_img.main(["--list-models", "--json"])
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"].split(" ")[0] for r in rows]
    assert names == list(models.BACKBONES) and len(set(names)) == len(names)
    assert all("embed_" + n in names for n in names if n.startswith("clip_") or n.startswith("openclip_"))
    assert {r["protocol"] for r in rows} == {"published", "new"}
    assert next(r for r in rows if r["name"].startswith("clip_rn50"))["distances"] == "l2,cos"
    run_single_img.main(["--list-models"])
    table = capsys.readouterr().out
    assert all(n in table for n in names) and "alias openclip_vitb32" in table


def test_weights_dir_layout_for_hub_files(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSIQA_WEIGHTS_DIR", str(tmp_path))
    target = tmp_path / "facebook" / "dinov2-base" / "model.safetensors"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert weights.resolve_weights(models.BACKBONES["dinov2"]) == str(target)
    (tmp_path / "RN50.pt").write_bytes(b"x")  # found under OpenAI's name, so it must be OpenAI's file
    with pytest.raises(UserError, match="not the published RN50.pt"):
        weights.resolve_weights(models.get_backbone("embed_clip_rn50"))
    assert models.get_backbone("openclip_vitb32") is models.BACKBONES["openclip_vitb32_laion"]


def test_a_new_backbone_is_one_registry_entry(monkeypatch, tiny_weights, tmp_path, capsys):
    """One Backbone row (here the tiny ViT family) is all the API and the CLI need."""
    from PIL import Image
    entry = models.Backbone(name="my_new_vit", arch="a new ViT", family=TINY_VIT, weights=TINY_WEIGHTS,
                            output="layers", cuda_published="fp32", shape="2x197x32", norm=models.IMAGENET_NORM)
    monkeypatch.setitem(models.BACKBONES, entry.name, entry)
    g = torch.Generator().manual_seed(0)
    for n in ("a", "b"):
        Image.fromarray((torch.rand(230, 240, 3, generator=g) * 255).byte().numpy()).save(tmp_path / f"{n}.png")
    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    api = Scorer("my_new_vit", "l2,wsd", device="cpu", weights=tiny_weights)(dis=b, ref=a)
    assert run_single_img.main(["-ref", a, "-dis", b, "-m", "my_new_vit", "-d", "l2,wsd", "--device", "cpu",
                                "--weights", tiny_weights, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "my_new_vit"
    for d in ("l2", "wsd"):
        assert close(out["scores"][d], float(api[d][0])), d
    run_single_img.main(["--list-models"])
    assert "my_new_vit" in capsys.readouterr().out


@pytest.mark.golden
def test_conv_map_backbone_through_run_py(checkpoint, tmp_path):
    """run.py with clip_rn50 (five map groups, the published NaN/inf cosine quirk) gives the
    API's scores."""
    import pandas as pd

    import minidata
    import run
    root = minidata.make_kadid(str(tmp_path / "k"), n_ref=1, n_dis=3)
    run.main(["-dat", "kadid10k", "--root", root, "-m", "clip_rn50", "-d", "l2,cos",
              "--weights", checkpoint("clip_rn50"),
              "--device", "cpu", "-sdir", str(tmp_path / "r"), "--no-progress"])
    frame = pd.read_csv(tmp_path / "r" / "kadid10k_clip_rn50_cos.csv")
    api = Scorer("clip_rn50", "cos", device="cpu", weights=checkpoint("clip_rn50"))(
        [os.path.join(root, p) for p in frame.ref], [os.path.join(root, p) for p in frame.dis])
    assert torch.allclose(torch.tensor(frame.pred.values), api.double(), rtol=1e-6)
