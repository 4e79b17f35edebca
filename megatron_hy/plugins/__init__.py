"""Files ms-swift imports with `--custom_register_path` (ms-swift puts this directory on sys.path)."""
