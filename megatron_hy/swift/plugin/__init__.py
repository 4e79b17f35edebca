"""Files ms-swift imports with `--custom_register_path` (ms-swift puts this directory on sys.path).

`swift_plugin_path()` is the absolute path of the Hy3 plugin, as `hy3 config --to swift`, the
launcher and the recipes pass it; finding it imports nothing.
"""

from pathlib import Path

SWIFT_PLUGIN = "ms_swift.py"


def swift_plugin_path() -> Path:
    return Path(__file__).resolve().parent / SWIFT_PLUGIN
