"""The ms-swift plugin for Hy3: pass this file to `megatron sft` / `megatron export` (and `swift sft`):

    megatron sft --custom_register_path $(python -c 'import megatron_hy.swift.plugin.ms_swift as m; print(m.__file__)') ...

(`hy3 config DIR --to swift` prints the line with this file's absolute path.) Importing it
- registers Hy3 with mcore-bridge (megatron_hy/swift/bridge.py): the architecture from the
  checkpoint's config.json in either spelling, Tencent's MTP norm key, both expert layouts;
- registers the `hy3` / `hy3_preview` templates (megatron_hy/swift/templates.py), which train on a
  row's reasoning_effort and reasoning_content.
Where mcore-bridge cannot be imported (plain `swift sft`), only the templates are registered.
Nodes need megatron-hy installed (the Dockerfile's image has it) or this checkout.
"""

import sys
from pathlib import Path

try:
    import megatron_hy  # noqa: F401
except ImportError:  # run from a checkout that is not installed: the package is three directories up
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import megatron_hy.swift.templates  # noqa: E402,F401  (registers the templates)

try:
    import mcore_bridge  # noqa: F401  (already imported by `megatron sft/export`)
except ImportError:     # plain `swift sft`, or no transformer-engine: ms-swift's Megatron path is not in use
    mcore_bridge = None
if mcore_bridge is not None:
    from megatron_hy.swift.bridge import register

    register()
