"""Will ms-swift build the checkpoint's model from this recipe? (`hy3 plan`; `hy3 launch` resolves the plugin.)

`megatron sft` builds Hy3 through mcore-bridge, which misreads Hy3's config.json unless our plugin is
imported (`custom_register_path`, docs/megatron.md "With ms-swift"); with it the architecture comes
from config.json. A recipe is rejected when it does not pass the plugin, when it sets a model field
(as a flag or in megatron_extra_kwargs) to something else than the checkpoint says, and when it leaves
`mtp_num_layers` unsaid (the plugin then trains the checkpoint's MTP layers, which the plan must count).
"""

from __future__ import annotations

from pathlib import Path

from ..config import Hy3Config
from .model import conflicts, plugin_paths, requested
from .plugin import swift_plugin_path

# How recipes name the plugin: the file's place in the package, which `hy3 launch` turns into the
# absolute path of the installed copy.
RECIPE_PLUGIN = "megatron_hy/swift/plugin/ms_swift.py"
# Where the plugin lay before the ms-swift code moved into one package: users' recipes may still say so.
OLD_RECIPE_PLUGINS = ("megatron_hy/plugins/ms_swift.py",)


def is_plugin(path: str) -> bool:
    p = str(path).replace("\\", "/")
    return (any(p == name or p.endswith("/" + name) for name in (RECIPE_PLUGIN, *OLD_RECIPE_PLUGINS))
            or Path(p).resolve() == swift_plugin_path())


def check(args: dict, cfg: Hy3Config) -> list[str]:
    errors = []
    if not any(is_plugin(p) for p in plugin_paths(args)):
        errors.append(f"custom_register_path does not name the Hy3 plugin ({RECIPE_PLUGIN}): without it mcore-bridge "
                      f"builds another model (no q/k norm, every layer MoE, no MTP); add "
                      f"`custom_register_path: {RECIPE_PLUGIN}`")
    errors += [f"{c}; ms-swift would build a model that does not match the checkpoint"
               for c in conflicts(cfg, requested(args))]
    if "mtp_num_layers" not in args and "mtp_num_layers" not in requested(args) and cfg.num_mtp_layers:
        errors.append(f"mtp_num_layers is not set: with the Hy3 plugin ms-swift trains the checkpoint's "
                      f"{cfg.num_mtp_layers} MTP layer(s); set mtp_num_layers: {cfg.num_mtp_layers} "
                      f"(or 0 to train without MTP) so the plan counts what runs")
    return errors


def with_plugin(args: dict) -> dict:
    """The arguments with the plugin passed by its absolute installed path (added when missing)."""
    key = "custom_register_path"
    given = args.get(key)
    paths = [str(x) for x in (given if isinstance(given, (list, tuple)) else [given] if given else [])]
    resolved = [str(swift_plugin_path()) if is_plugin(p) else p for p in paths]
    if not any(is_plugin(p) for p in plugin_paths(args)):
        resolved.append(str(swift_plugin_path()))
    out = dict(args)
    out[key] = resolved[0] if len(resolved) == 1 else resolved
    return out
