"""DaViT image encoder (Dual Attention Vision Transformer) as used by Florence-2.

Each stage is a convolutional patch embedding followed by blocks of (spatial window attention,
channel group attention), each with depthwise-conv residuals. No shifted windows, no relative
position bias, no final norm or classification head (Florence-2 deletes both).

Module names follow the native transformers checkpoint layout so that loading is a plain rename.
Activations travel as token maps ``(B, H, W, C)``; the depthwise convolutions see ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from florence2.config import VisionConfig


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample, in training only."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvEmbed(nn.Module):
    """Strided conv patch embedding; LayerNorm before the conv (on its input channels) or after it."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, stride: int, padding: int, pre_norm: bool):
        super().__init__()
        self.pre_norm = pre_norm
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(in_dim if pre_norm else out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H, W, C_in) -> (B, H', W', C_out)
        if self.pre_norm:
            x = self.norm(x)
        x = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if not self.pre_norm:
            x = self.norm(x)
        return x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``window_size`` x ``window_size`` windows."""

    def __init__(self, dim: int, num_heads: int, window_size: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        ws, nh = self.window_size, self.num_heads
        # zero-pad right/bottom to whole windows; the padded tokens are cropped away afterwards
        pad_h, pad_w = (-H) % ws, (-W) % ws
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        windows = x.view(B, Hp // ws, ws, Wp // ws, ws, C).transpose(2, 3).reshape(-1, ws * ws, C)
        q, k, v = self.qkv(windows).view(-1, ws * ws, 3, nh, C // nh).permute(2, 0, 3, 1, 4)  # (nW*B, nh, T, hd)
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(-1, ws * ws, C))
        out = out.view(B, Hp // ws, Wp // ws, ws, ws, C).transpose(2, 3).reshape(B, Hp, Wp, C)
        return out[:, :H, :W, :]


class ChannelAttention(nn.Module):
    """Attention across channels within groups: a (C/g x C/g) attention map per group, with queries
    scaled by ``N ** -0.5`` where N is the number of spatial tokens (the map's inner dimension)."""

    def __init__(self, dim: int, groups: int, qkv_bias: bool) -> None:
        super().__init__()
        self.groups = groups
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        g = self.groups
        q, k, v = self.qkv(x).view(B, N, 3, g, C // g).permute(2, 0, 3, 4, 1)  # (B, g, C/g, N)
        out = F.scaled_dot_product_attention(q, k, v, scale=N**-0.5)  # (B, g, C/g, N)
        return self.proj(out.permute(0, 3, 1, 2).reshape(B, N, C))


class _DualBlock(nn.Module):
    """x + dwconv(x); x + attn(norm(x)); x + dwconv(x); x + mlp(norm(x)). Subclasses set the attention."""

    attn_name: str

    def __init__(self, dim: int, attn: nn.Module, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        setattr(self, self.attn_name, attn)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def _dwconv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return x + conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, H, W, C)
        x = self._dwconv(self.conv1, x)
        x = x + self.drop_path(self._attend(self.norm1(x)))
        x = self._dwconv(self.conv2, x)
        return x + self.drop_path(self.ffn(self.norm2(x)))


class SpatialBlock(_DualBlock):
    attn_name = "window_attn"

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        return self.window_attn(x)


class ChannelBlock(_DualBlock):
    attn_name = "channel_attn"

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        return self.channel_attn(x.reshape(B, H * W, C)).view(B, H, W, C)


class DaViTBlock(nn.Module):
    def __init__(self, spatial_block: SpatialBlock, channel_block: ChannelBlock) -> None:
        super().__init__()
        self.spatial_block = spatial_block
        self.channel_block = channel_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_block(self.spatial_block(x))


class DaViT(nn.Module):
    """Image ``(B, 3, H, W)`` -> last-stage token map ``(B, H/32, W/32, embed_dims[-1])``."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        c = config
        num_blocks = 2 * sum(c.depths)
        # stochastic depth grows linearly over all (spatial, channel) blocks of the network
        rates = [c.drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        self.convs = nn.ModuleList()
        self.blocks = nn.ModuleList()
        offset = 0
        for i, dim in enumerate(c.embed_dims):
            in_dim = c.in_channels if i == 0 else c.embed_dims[i - 1]
            self.convs.append(
                ConvEmbed(in_dim, dim, c.patch_size[i], c.patch_stride[i], c.patch_padding[i], c.patch_prenorm[i])
            )
            stage = nn.ModuleList()
            for j in range(c.depths[i]):
                spatial = SpatialBlock(
                    dim,
                    WindowAttention(dim, c.num_heads[i], c.window_size, c.qkv_bias),
                    c.mlp_ratio,
                    rates[offset + 2 * j],
                )
                channel = ChannelBlock(
                    dim, ChannelAttention(dim, c.num_groups[i], c.qkv_bias), c.mlp_ratio, rates[offset + 2 * j + 1]
                )
                stage.append(DaViTBlock(spatial, channel))
            self.blocks.append(stage)
            offset += 2 * c.depths[i]
        self.gradient_checkpointing = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.permute(0, 2, 3, 1)  # (B, H, W, 3)
        checkpointed = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for conv, stage in zip(self.convs, self.blocks):
            x = conv(x)
            for block in stage:
                # recompute the block's activations in the backward pass (RNG replayed: same drop path)
                x = checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
        return x
