"""Plain-torch ResNet-50 and ViT-B/16, the shapes of the vision models teams audit, with no download.

Module names follow torchvision's ResNet (``conv1``, ``layer1``..``layer4``, ``fc``) and timm's ViT
(``patch_embed``, ``cls_token``, ``blocks.0``..``blocks.11``, ``head``), so a state dict saved from either loads
with ``load_state_dict`` and a spec written for one names the same layers. The factories build seeded random
weights (the caller's random state is left as it was); a user with real weights points the spec's ``weights:``
at them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus the identity or a projected shortcut; torchvision's layout."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A bottleneck ResNet: stem, four stages (``layer1``..``layer4``), global average pooling, ``fc``."""

    def __init__(self, blocks: tuple[int, int, int, int] = (3, 4, 6, 3), num_classes: int = 1000, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        for stage, count in enumerate(blocks):
            stage_width = width * 2**stage
            layers = []
            for index in range(count):
                layers.append(Bottleneck(channels, stage_width, stride=2 if index == 0 and stage > 0 else 1))
                channels = stage_width * Bottleneck.expansion
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches projected to ``dim``: ``[B, 3, H, W]`` -> ``[B, N, dim]``."""

    def __init__(self, patch: int, dim: int, channels: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention written out (one ``qkv`` projection, softmax, ``proj``), as timm names it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``; outputs ``[B, tokens, dim]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT: patch embedding, a class token, learned position embeddings, ``depth`` blocks, a final norm, and a
    ``head`` on the class token. Block outputs are ``[B, 1 + (image_size / patch)**2, dim]``: the class token
    first, then the patch tokens row by row (declare them to an audit as ``tokens: {grid: [14, 14], skip: 1}``)."""

    def __init__(
        self,
        image_size: int = 224,
        patch: int = 16,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        num_classes: int = 1000,
        channels: int = 3,
    ):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
        tokens = (image_size // patch) ** 2
        self.patch_embed = PatchEmbedding(patch, dim, channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal class token and position embeddings (std 0.02), as ViT initialises them; the random
        baseline calls this too."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        # x.shape[0], not len(x): torch.export would fix the batch size at the example's
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


SEED = 0


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (3, 4, 6, 3 bottlenecks) for ``[3, 224, 224]`` input, seeded random weights (seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return ResNet((3, 4, 6, 3), num_classes)


def vit_b16(num_classes: int = 1000) -> VisionTransformer:
    """ViT-B/16 (dim 768, 12 blocks of 12 heads) for ``[3, 224, 224]`` input, seeded random weights (seed 0)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return VisionTransformer(224, 16, 768, 12, 12, num_classes)


EXAMPLES = {"resnet50_seeded": resnet50, "vit_b16_seeded": vit_b16}


def write_example_weights(out_dir: Path) -> list[Path]:
    """The seeded weights of each example (``EXAMPLES``) as safetensors, for the example specs to point at;
    a file already there is kept (the same seed writes the same bytes)."""
    from safetensors.torch import save_file

    from interp_ops.cache_dirs import write_atomically

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, factory in EXAMPLES.items():
        path = out_dir / f"{name}.safetensors"
        if not path.exists():
            weights = {key: value.contiguous() for key, value in factory().state_dict().items()}
            write_atomically(path, lambda partial, weights=weights: save_file(weights, partial))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_example_weights(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-models")):
        print(f"{path} ({path.stat().st_size / 1e6:.0f} MB)")
