"""Masked brain modeling (MBM): a masked autoencoder for 1D-patched fMRI (paper 3.3, B; MinD-Vis).

The fMRI of one TR, ``[N, V]`` voxels ordered along the visual hierarchy, is cut into ``L = V/p``
patches of ``p`` consecutive voxels. Each patch becomes a token; a fixed 1D sine-cosine position
embedding says where it lies. A random 75% of the tokens per sample are dropped, a ViT encoder
embeds the rest (plus a CLS token, as in MinD-Vis), and a small ViT decoder fills mask tokens in
and predicts every patch's voxels. The loss is the MSE on the masked patches only.

Reading order follows MAE's ``models_mae.py``: :meth:`MBMAutoencoder.forward_encoder` →
:meth:`~MBMAutoencoder.forward_decoder` → :meth:`~MBMAutoencoder.forward_loss`.

Size presets: :func:`mbm_paper` (Table B.1), :func:`mbm_demo`, :func:`mbm_tiny`.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mindvideo.encoder.layers import Block, PatchEmbed1D, get_1d_sincos_pos_embed, init_vit_weights
from mindvideo.encoder.losses import masked_mse
from mindvideo.utils import UserError

__all__ = ["MBMAutoencoder", "check_patching", "mbm_demo", "mbm_paper", "mbm_tiny", "num_masked"]


def check_patching(num_voxels: int, patch_size: int) -> int:
    """Return ``L = V / p``; raise a :class:`UserError` if ``V`` is not a multiple of ``p``."""
    if patch_size < 1 or num_voxels < patch_size or num_voxels % patch_size:
        raise UserError(
            f"The fMRI has {num_voxels} voxels, which is not a positive multiple of the patch "
            f"size {patch_size}; pad the voxels to a multiple of {patch_size} when preparing "
            "the data, or choose another patch_size."
        )
    return num_voxels // patch_size


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """Patches masked per sample: ``round(L · mask_ratio)``, halves rounded up.

    MAE keeps ``int(L · (1 - r))`` instead; the two differ only when ``L · r`` is not a whole
    number. Rounding half up keeps the count independent of Python's round-half-to-even.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise UserError(f"mask_ratio must lie in [0, 1), got {mask_ratio}; the paper uses 0.75.")
    return min(int(num_patches * mask_ratio + 0.5), num_patches - 1)


class MBMAutoencoder(ModelMixin, ConfigMixin):
    """Asymmetric ViT masked autoencoder for fMRI (MBM, paper 3.3 and Table B.1; MinD-Vis).

    Args:
        num_voxels: ``V``, voxels per TR; a multiple of ``patch_size`` (the data layer pads).
        patch_size: ``p``, voxels per patch (paper: 16).
        embed_dim, depth, num_heads: encoder width / blocks / heads (paper: 1024 / 24 / 16).
        decoder_embed_dim, decoder_depth, decoder_num_heads: decoder (paper: 512 / 8 / 16).
        mlp_ratio: MLP hidden size over width, encoder and decoder (paper: 1.0).
        use_cls_token: prepend a learned CLS token to the encoder input, as MinD-Vis does.
        norm_target: per-patch normalised targets (MAE's ``norm_pix_loss``); MinD-Vis does not
            use it, so it is off by default. The fMRI is z-scored per voxel already.
        qkv_bias: bias in the attention's query/key/value projection (MinD-Vis: True).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        num_voxels: int = 4096,
        patch_size: int = 16,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 1.0,
        use_cls_token: bool = True,
        norm_target: bool = False,
        qkv_bias: bool = True,
    ):
        super().__init__()
        L = check_patching(num_voxels, patch_size)
        self.num_patches = L
        self.num_prefix_tokens = 1 if use_cls_token else 0
        self.gradient_checkpointing = False

        # ---- encoder ----
        self.patch_embed = PatchEmbed1D(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_cls_token else None
        # fixed, derived from the config: a non-persistent buffer, never trained or saved
        self.register_buffer(
            "pos_embed", get_1d_sincos_pos_embed(embed_dim, L, use_cls_token), persistent=False
        )  # [P + L, D] with P = num_prefix_tokens
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim)

        # ---- decoder ----
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer(
            "decoder_pos_embed",
            get_1d_sincos_pos_embed(decoder_embed_dim, L, use_cls_token),
            persistent=False,
        )  # [P + L, Dd]
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size)

        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE initialisation: xavier Linear / patch embedding, N(0, 0.02) CLS and mask tokens."""
        self.apply(init_vit_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # ------------------------------------------------------------------ patches
    def patchify(self, fmri: torch.Tensor) -> torch.Tensor:
        """fmri: ``[N, V]`` → patches ``[N, L, p]``; patch ``j`` = voxels ``j·p … (j+1)·p - 1``."""
        self._check_input(fmri)
        p = self.config.patch_size
        return fmri.reshape(fmri.shape[0], -1, p)  # [N, L, p]

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """patches: ``[N, L, p]`` → fmri ``[N, V]``; the exact inverse of :meth:`patchify`."""
        return patches.reshape(patches.shape[0], -1)  # [N, L·p]

    def _check_input(self, fmri: torch.Tensor) -> None:
        V = self.config.num_voxels
        if fmri.ndim != 2 or fmri.shape[1] != V:
            raise UserError(
                f"The MBM model expects fMRI of shape [N, {V}] (num_voxels in its config.json) "
                f"but got {list(fmri.shape)}; prepare the data with the same voxel count."
            )

    # ------------------------------------------------------------------ masking
    def random_masking(
        self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample random masking by argsort of uniform noise (MAE).

        Args:
            x: tokens ``[N, L, D]``.
            generator: a ``torch.Generator`` on ``x``'s device for reproducible masks; ``None``
                draws from the global RNG.

        Returns:
            kept tokens ``[N, L_keep, D]``; mask ``[N, L]`` (1 = masked, 0 = visible);
            ids_restore ``[N, L]`` (the inverse permutation).
        """
        N, L, D = x.shape
        len_keep = L - num_masked(L, mask_ratio)
        noise = torch.rand(N, L, device=x.device, generator=generator)  # [N, L]
        ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest are kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # [N, L]
        ids_keep = ids_shuffle[:, :len_keep]  # [N, L_keep]
        x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, D))  # [N, L_keep, D]
        mask = torch.ones(N, L, device=x.device, dtype=x.dtype)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)  # [N, L] in the original patch order
        return x_kept, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder
    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(blk, x)
            else:
                x = blk(x)
        return x

    def _prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[N, T, D]`` → ``[N, P + T, D]`` (the CLS token with its position, if any)."""
        if self.cls_token is None:
            return x
        cls = (self.cls_token + self.pos_embed[:1]).expand(x.shape[0], -1, -1)  # [N, 1, D]
        return torch.cat([cls, x], dim=1)

    def forward_encoder(
        self, fmri: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed, mask, encode the visible patches.

        Args:
            fmri: ``[N, V]``.

        Returns:
            latent ``[N, P + L_keep, D]`` (``P`` = 1 with a CLS token), mask ``[N, L]``,
            ids_restore ``[N, L]``.
        """
        self._check_input(fmri)
        P = self.num_prefix_tokens
        x = self.patch_embed(fmri) + self.pos_embed[P:]  # [N, L, D]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, generator)  # [N, L_keep, D]
        x = self._prepend_cls(x)  # [N, P + L_keep, D]
        x = self._run_blocks(self.blocks, x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Fill in mask tokens, unshuffle, decode every patch.

        Args:
            latent: ``[N, P + L_keep, D]``; ids_restore: ``[N, L]``.

        Returns:
            predicted patches ``[N, L, p]``.
        """
        P = self.num_prefix_tokens
        x = self.decoder_embed(latent)  # [N, P + L_keep, Dd]
        N, _, Dd = x.shape
        L = ids_restore.shape[1]
        mask_tokens = self.mask_token.expand(N, L - (x.shape[1] - P), -1)  # [N, L - L_keep, Dd]
        x_ = torch.cat([x[:, P:], mask_tokens], dim=1)  # [N, L, Dd], shuffled order
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, Dd))  # [N, L, Dd]
        x = torch.cat([x[:, :P], x_], dim=1) + self.decoder_pos_embed  # [N, P + L, Dd]
        x = self._run_blocks(self.decoder_blocks, x)
        x = self.decoder_pred(self.decoder_norm(x))  # [N, P + L, p]
        return x[:, P:]  # [N, L, p]

    def forward_loss(
        self, fmri: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """MSE on the masked patches only (MBM objective, paper 3.3).

        Args:
            fmri: ``[N, V]``; pred: ``[N, L, p]``; mask: ``[N, L]`` (1 = masked).

        Returns:
            scalar loss: mean over masked patches of the per-patch mean squared error.
        """
        target = self.patchify(fmri)  # [N, L, p]
        if self.config.norm_target:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return masked_mse(pred, target, mask)

    def forward(
        self,
        fmri: torch.Tensor,
        mask_ratio: float = 0.75,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fmri: ``[N, V]`` → (loss scalar, pred ``[N, L, p]``, mask ``[N, L]``)."""
        latent, mask, ids_restore = self.forward_encoder(fmri, mask_ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)  # [N, L, p]
        loss = self.forward_loss(fmri, pred, mask)
        return loss, pred, mask

    @torch.no_grad()
    def reconstruct(
        self,
        fmri: torch.Tensor,
        mask_ratio: float = 0.75,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill in masked voxels: visible patches kept, masked ones predicted.

        Returns:
            reconstruction ``[N, V]`` and the voxel mask ``[N, V]`` (1 = was masked).
        """
        _, pred, mask = self(fmri, mask_ratio, generator)
        m = mask[..., None]  # [N, L, 1]
        patches = self.patchify(fmri) * (1 - m) + pred * m  # [N, L, p]
        voxel_mask = m.expand_as(pred)  # [N, L, p]
        return self.unpatchify(patches), self.unpatchify(voxel_mask)

    def encode(self, fmri: torch.Tensor) -> torch.Tensor:
        """The encoder on all patches (no masking): fmri ``[N, V]`` → tokens ``[N, L, D]``.

        This is what the spatiotemporal encoder reproduces per TR right after inflation; the
        CLS token takes part in attention but is dropped from the output.
        """
        self._check_input(fmri)
        P = self.num_prefix_tokens
        x = self.patch_embed(fmri) + self.pos_embed[P:]  # [N, L, D]
        x = self._prepend_cls(x)  # [N, P + L, D]
        x = self._run_blocks(self.blocks, x)
        return self.norm(x)[:, P:]  # [N, L, D]


# ---------------------------------------------------------------------------- size presets
def mbm_paper(num_voxels: int, **overrides) -> MBMAutoencoder:
    """Paper size (Table B.1, ViT-L): patch 16, encoder 24 × 1024 × 16 heads, MLP ratio 1.0,
    decoder 8 × 512 × 16 heads. About 165 M parameters (151 M in the encoder)."""
    config = dict(
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        decoder_embed_dim=512,
        decoder_depth=8,
        decoder_num_heads=16,
        mlp_ratio=1.0,
    )
    return MBMAutoencoder(num_voxels=num_voxels, **{**config, **overrides})


def mbm_demo(num_voxels: int, **overrides) -> MBMAutoencoder:
    """Demo size for a laptop CPU: encoder 4 × 128 × 4 heads, decoder 2 × 64 × 4 heads."""
    config = dict(
        patch_size=16,
        embed_dim=128,
        depth=4,
        num_heads=4,
        decoder_embed_dim=64,
        decoder_depth=2,
        decoder_num_heads=4,
        mlp_ratio=1.0,
    )
    return MBMAutoencoder(num_voxels=num_voxels, **{**config, **overrides})


def mbm_tiny(num_voxels: int, **overrides) -> MBMAutoencoder:
    """Test size: encoder 2 × 32 × 2 heads, decoder 1 × 16 × 2 heads (seconds on a CPU)."""
    config = dict(
        patch_size=16,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_num_heads=2,
        mlp_ratio=1.0,
    )
    return MBMAutoencoder(num_voxels=num_voxels, **{**config, **overrides})
