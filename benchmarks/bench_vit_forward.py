"""Forward throughput of our big_vision ViT against transformers' SiglipVisionModel, same weights, same run.

Both models hold the same MAP-pool ViT weights (ours converted into SigLIP's layout), are checked to give
the same pooled output, then timed alternately so machine noise hits both alike. Prints images/s for each
and the ratio ours / SigLIP (goal >= 1.0).

    python benchmarks/bench_vit_forward.py                 # B/16 at 224, batch 8, CPU
    python benchmarks/bench_vit_forward.py --variant S/16 --batch 32 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from big_vision_hf import BvViTConfig, BvViTModel


def siglip_twin(ours: BvViTModel) -> SiglipVisionModel:
    """A SiglipVisionModel holding exactly our weights (big_vision MAP-pool ViT, no cls, learned posemb)."""
    c = ours.config
    sc = SiglipVisionConfig(
        hidden_size=c.hidden_size, intermediate_size=c.intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, image_size=c.image_size[0], patch_size=c.patch_size[0],
        layer_norm_eps=c.layer_norm_eps, hidden_act=c.hidden_act, vision_use_head=True,
    )
    twin = SiglipVisionModel(sc)
    sd = {k: v for k, v in ours.state_dict().items()}
    new = {}
    for k, v in sd.items():
        if k == "embeddings.position_embedding":
            new["embeddings.position_embedding.weight"] = v[0]
        elif k.startswith("embeddings."):
            new["" + k] = v
        elif k.startswith("encoder.post_layernorm"):
            new[k.replace("encoder.post_layernorm", "post_layernorm")] = v
        elif k.startswith("encoder."):
            new["" + k] = v
        elif k.startswith("map_head."):
            rest = k[len("map_head."):]
            if rest.startswith("attention."):
                continue
            new["head." + rest] = v
    for kind in ("weight", "bias"):
        new[f"head.attention.in_proj_{kind}"] = torch.cat(
            [sd[f"map_head.attention.{p}_proj.{kind}"] for p in ("q", "k", "v")])
        new[f"head.attention.out_proj.{kind}"] = sd[f"map_head.attention.out_proj.{kind}"]
    missing, unexpected = twin.load_state_dict(new, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    return twin


def timed(model, x, iters: int) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="B/16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    ours = BvViTModel(BvViTConfig.from_variant(args.variant, image_size=args.image_size, pool_type="map"))
    ours.set_attn_implementation("sdpa")
    twin = siglip_twin(ours)
    twin.set_attn_implementation("sdpa")
    ours, twin = (m.to(args.device, dtype).eval() for m in (ours, twin))
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=args.device, dtype=dtype)

    with torch.inference_mode():
        diff = (ours(x).pooler_output - twin(x).pooler_output).abs().max().item()
        print(f"same weights check: max |ours - siglip| pooled = {diff:.2e}")
        for m in (ours, twin):
            timed(m, x, 1)  # warm-up
        t_ours = t_twin = 0.0
        for _ in range(args.rounds):
            t_ours += timed(ours, x, args.iters)
            t_twin += timed(twin, x, args.iters)
    n = args.batch * args.iters * args.rounds
    print(f"ViT-{args.variant} @{args.image_size} MAP, batch {args.batch}, {args.device} {args.dtype}, "
          f"torch {torch.__version__}")
    print(f"  big_vision_hf BvViTModel      : {n / t_ours:8.1f} img/s")
    print(f"  transformers SiglipVisionModel: {n / t_twin:8.1f} img/s")
    print(f"  ratio ours / siglip           : {t_twin / t_ours:.3f}x  (goal >= 1.0)")


if __name__ == "__main__":
    main()
