"""The ms-swift plugin for Hy3: pass this file to `megatron sft` / `megatron export` (and `swift sft`):

    megatron sft --custom_register_path $(python -c 'import megatron_hy.plugins.ms_swift as m; print(m.__file__)') ...

(`hy3 config DIR --to swift` prints the line with this file's absolute path.) Importing it
- registers Hy3 with mcore-bridge (megatron_hy/megatron/swift_bridge.py): the architecture from the
  checkpoint's config.json in either spelling, Tencent's MTP norm key, both expert layouts;
- registers the `hy3` / `hy3_preview` templates (megatron_hy/data/swift_plugin.py), which train on a
  row's reasoning_effort and reasoning_content.
Where mcore-bridge is not installed (plain `swift sft`), only the templates are registered.
"""

import importlib.util

import megatron_hy.data.swift_plugin  # noqa: F401  (registers the templates)

if importlib.util.find_spec("mcore_bridge") is not None:
    from megatron_hy.megatron.swift_bridge import register

    register()
