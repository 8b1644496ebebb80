"""Multimodal strategies: the template mixin, drop-in twins of Avalanche's
stock strategies, and the MMCL methods (one module per method)."""

from .template import MultimodalTemplateMixin, resolve_collate
from .twins import *  # noqa: F401,F403
from .twins import __all__ as _twins_all
from .twins_advanced import *  # noqa: F401,F403
from .twins_advanced import __all__ as _twins_advanced_all

__all__ = ["MultimodalTemplateMixin", "resolve_collate"] + list(_twins_all) + list(_twins_advanced_all)

# CLIP-era methods of the main job (one module per method: plugin + strategy)
from .finetune import FineTune, IterationSchedulePlugin  # noqa: E402
from .zeroshot import ZeroShot, ZeroShotPlugin  # noqa: E402
from .clip_lwf import CLIPLwF, CLIPLwFPlugin  # noqa: E402
from .wiseft import WiSEFT, WiSEFTPlugin  # noqa: E402
from .zscl import ZSCL, ZSCLPlugin  # noqa: E402
from .er import ER  # noqa: E402
from .mod_x import ContrastiveFineTune, ModX, ModXPlugin  # noqa: E402
from .ctp import CTP, CTPPlugin  # noqa: E402

from .icarl_clip import ICaRLCLIP, ICaRLCLIPPlugin  # noqa: E402
from .lwf_vr import LwFVR, LwFVRPlugin  # noqa: E402

__all__ += [
    "FineTune",
    "IterationSchedulePlugin",
    "ZeroShot",
    "ZeroShotPlugin",
    "CLIPLwF",
    "CLIPLwFPlugin",
    "WiSEFT",
    "WiSEFTPlugin",
    "ZSCL",
    "ZSCLPlugin",
    "ER",
    "ContrastiveFineTune",
    "ModX",
    "ModXPlugin",
    "CTP",
    "CTPPlugin",

    "ICaRLCLIP",
    "ICaRLCLIPPlugin",
    "LwFVR",
    "LwFVRPlugin",
]

# audio-visual and modality-imbalance methods (issue 13)
from .ogm_ge import OGMGE, OGMGEPlugin  # noqa: E402
from .av_cil import AVCIL, AVCILPlugin, ExemplarReplayPlugin  # noqa: E402
from .samm import SAMM, SAMMPlugin  # noqa: E402

__all__ += ["OGMGE", "OGMGEPlugin", "AVCIL", "AVCILPlugin", "ExemplarReplayPlugin", "SAMM", "SAMMPlugin"]

# architecture family (issue 12)
from .moe_adapters import DDASRouting, MoEAdapters, MoEAdaptersPlugin  # noqa: E402

__all__ += ["MoEAdapters", "MoEAdaptersPlugin", "DDASRouting"]

# prompt-based methods on a frozen CLIP (issue 12): one module per method
from .l2p import L2P, L2PPlugin  # noqa: E402
from .dualprompt import DualPrompt, DualPromptPlugin  # noqa: E402
from .coda_prompt import CODAPrompt, CODAPromptPlugin  # noqa: E402
from .s_liprompts import SLiPrompts, SLiPromptsPlugin  # noqa: E402
from .attriclip import AttriCLIP, AttriCLIPPlugin  # noqa: E402

__all__ += [
    "L2P",
    "L2PPlugin",
    "DualPrompt",
    "DualPromptPlugin",
    "CODAPrompt",
    "CODAPromptPlugin",
    "SLiPrompts",
    "SLiPromptsPlugin",
    "AttriCLIP",
    "AttriCLIPPlugin",
]
