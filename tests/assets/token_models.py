"""Small vision transformers for the token-layer tests, from interp_ops.reference_models' ViT at other sizes.

``planted_vit``: 48x48 input in patches of 4 (a 12x12 grid after the class token), dim 8, two blocks. Dim 0 of
``blocks.0`` and ``blocks.1`` is, by construction, each patch's mean of R - G - B (the planted CNN's red unit):
the patch embedding computes it, its position embedding and class token are 0 there, and every block adds
nothing to it (its attention and MLP write 0 into dim 0), so the residual stream carries it through.
"""

import torch

from interp_ops.reference_models import VisionTransformer

IMAGE, PATCH, DIM = 48, 4, 8
RED_DIM = 0


def planted_vit() -> VisionTransformer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = VisionTransformer(IMAGE, PATCH, DIM, depth=2, heads=2, num_classes=3)
    with torch.no_grad():
        model.patch_embed.proj.weight[RED_DIM] = torch.tensor([1.0, -1.0, -1.0])[:, None, None] / PATCH**2
        model.patch_embed.proj.bias[RED_DIM] = 0.0
        model.pos_embed[..., RED_DIM] = 0.0
        model.cls_token[..., RED_DIM] = 0.0
        for block in model.blocks:
            for projection in (block.attn.proj, block.mlp.fc2):
                projection.weight[RED_DIM] = 0.0
                projection.bias[RED_DIM] = 0.0
    return model


def vit_without_class_token() -> torch.nn.Module:
    """Tokens that are all patches (skip 0): a 32x32 input in patches of 8, a 4x4 grid, pooled by mean."""

    class MeanPooledViT(VisionTransformer):
        def forward(self, x):
            tokens = self.patch_embed(x) + self.pos_embed[:, 1:]
            return self.head(self.norm(self.blocks(tokens)).mean(dim=1))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        return MeanPooledViT(32, 8, 12, depth=1, heads=3, num_classes=2)
